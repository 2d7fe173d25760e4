"""Residual autoencoder encoder (stage 1, training only): HR and the bicubic LR -> latent.

It sees HR−LR and the bicubic LR, and encodes what the LR lacks into ``latent`` channels at HR/8
(three stride-2 stages): the mean of a Gaussian posterior whose variance is fixed in training
(training/stage1.py), so the encoder has nothing to gain by drowning its message in noise.
HR height and width must be multiples of 8.
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
        self.out = nn.Conv2d(c_in, latent, 3, padding=1)

    def forward(self, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        """The latent (B, latent, H/8, W/8)."""
        return self.out(self.body(F.silu(self.head(torch.cat([hr - lr_up, lr_up], dim=1)))))
