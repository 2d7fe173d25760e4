"""PatchGAN discriminator (stage 1, training only): a small spectral-norm CNN from scratch.

It sees an image together with the bicubic LR at the same pixels, so it judges whether the
detail fits the LR, and gives one logit per patch (receptive field 34×34 pixels at the defaults).
No normalisation pools over space; spectral norm keeps it Lipschitz so the hinge game stays stable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Discriminator(nn.Module):
    def __init__(self, bands: int = 3, channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.config = {"bands": bands, "channels": list(channels)}
        layers, c_in = [], 2 * bands
        for i, c in enumerate(channels):
            layers.append(spectral_norm(nn.Conv2d(c_in, c, 4, stride=2 if i < len(channels) - 1 else 1, padding=1)))
            c_in = c
        self.body = nn.ModuleList(layers)
        self.out = spectral_norm(nn.Conv2d(c_in, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        """Patch logits (B, 1, h, w) of the images x (B, bands, H, W) given the bicubic LR lr_up."""
        h = torch.cat([x - lr_up, lr_up], dim=1)
        for conv in self.body:
            h = F.leaky_relu(conv(h), 0.2)
        return self.out(h)
