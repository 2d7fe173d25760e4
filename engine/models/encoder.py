"""Residual autoencoder encoder (stage 1, training only): HR and the bicubic LR -> latent.

It encodes what the LR lacks, the residual r = HR − bicubic(LR), into ``latent`` = 4 channels at
HR/8: a fixed analysis of r per 8×8 block (log RMS energy, log mean |∂x r| and |∂y r|, and the
mean, all of the band-mean residual), standardised with constants set from training data, plus a
learned correction by a strided CNN on (r, bicubic LR). Training (training/stage1.py) starts the
correction at zero. A purely learned latent never came alive here: the decoder learned to ignore
it before it carried anything (docs/MODELS.md). HR height and width must be multiples of 8.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ANALYSIS = 4  # channels of the fixed analysis
BLOCK = 8
FLOOR = 1e-3  # of the log energies, in reflectance units


def analysis(hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
    """The fixed part of the latent, unstandardised: (B, 4, H/8, W/8)."""
    r = (hr - lr_up).mean(1, keepdim=True)
    gx = F.pad((r[..., :, 1:] - r[..., :, :-1]).abs(), (0, 1))
    gy = F.pad((r[..., 1:, :] - r[..., :-1, :]).abs(), (0, 0, 0, 1))
    return torch.cat([torch.log(F.avg_pool2d(r * r, BLOCK).sqrt() + FLOOR),
                      torch.log(F.avg_pool2d(gx, BLOCK) + FLOOR),
                      torch.log(F.avg_pool2d(gy, BLOCK) + FLOOR),
                      F.avg_pool2d(r, BLOCK)], dim=1)


class Encoder(nn.Module):
    def __init__(self, bands: int = 3, latent: int = 4, channels: tuple[int, ...] = (32, 64, 96)):
        super().__init__()
        if latent != ANALYSIS:
            raise ValueError(f"the encoder makes {ANALYSIS} latent channels, not {latent}")
        self.config = {"bands": bands, "latent": latent, "channels": list(channels)}
        self.head = nn.Conv2d(2 * bands, channels[0], 3, padding=1)
        stages = []
        c_in = channels[0]
        for c in channels:
            stages += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*stages)
        self.out = nn.Conv2d(c_in, latent, 3, padding=1)
        self.register_buffer("shift", torch.zeros(1, latent, 1, 1))
        self.register_buffer("spread", torch.ones(1, latent, 1, 1))

    def standardise(self, hr_batches) -> None:
        """Set the analysis' standardisation from an iterable of (hr, lr_up) training batches."""
        a = torch.cat([analysis(hr, lr_up) for hr, lr_up in hr_batches])
        self.shift.copy_(a.mean((0, 2, 3), keepdim=True))
        self.spread.copy_(a.std((0, 2, 3), keepdim=True).clamp_min(1e-6))

    def forward(self, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        """The latent (B, latent, H/8, W/8)."""
        learned = self.out(self.body(F.silu(self.head(torch.cat([hr - lr_up, lr_up], dim=1)))))
        return (analysis(hr, lr_up) - self.shift) / self.spread + learned
