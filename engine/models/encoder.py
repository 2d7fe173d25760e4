"""Residual autoencoder encoder (stage 1, training only): HR and the bicubic LR -> latent.

It sees HR−LR and the bicubic LR, and encodes what the LR lacks into a diagonal Gaussian of
``latent`` channels at HR/8 (three stride-2 stages). HR height and width must be multiples of 8.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    def __init__(self, bands: int = 3, latent: int = 4, channels: tuple[int, ...] = (32, 64, 96)):
        super().__init__()
        self.config = {"bands": bands, "latent": latent, "channels": list(channels)}
        self.head = nn.Conv2d(2 * bands, channels[0], 3, padding=1)
        stages = []
        c_in = channels[0]
        for c in channels:
            stages += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*stages)
        self.out = nn.Conv2d(c_in, 2 * latent, 3, padding=1)

    def forward(self, hr: torch.Tensor, lr_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of the latent, each (B, latent, H/8, W/8)."""
        h = self.body(F.silu(self.head(torch.cat([hr - lr_up, lr_up], dim=1))))
        mean, logvar = self.out(h).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)
