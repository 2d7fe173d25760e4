"""The adversarial losses of stage 1 (hinge), pure functions of the discriminator's logits."""
from __future__ import annotations

import torch


def hinge_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: mean relu(1 − D(real)) + mean relu(1 + D(fake))."""
    return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()


def hinge_generator(fake: torch.Tensor) -> torch.Tensor:
    """The generator's hinge loss: −mean D(fake)."""
    return -fake.mean()
