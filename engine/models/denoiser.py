"""Latent denoiser: a small UNet on the latent, z_t concatenated with the condition.

The condition is the conditioning net's whole output: its latent guess and ``features`` more
channels when it has them (its log spread and LR features, engine.models.condition). Time (t/T) and
1/scale are embedded together and modulate every residual block. The same network
serves E²DiffSR (output read as ε) and LCMSR (output read as F of the consistency function). Each
level halves the resolution, so latent height and width must be multiples of ``multiple``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Embedding, ResBlock
from .sampling import unet_multiple


class Denoiser(nn.Module):
    def __init__(self, latent: int = 4, channels: tuple[int, ...] = (64, 96, 128), emb_dim: int = 128, features: int = 0):
        super().__init__()
        self.config = {"latent": latent, "channels": list(channels), "emb_dim": emb_dim}
        if features:
            self.config["features"] = features
        self.multiple = unet_multiple(channels)
        self.emb = Embedding(2, emb_dim)
        self.head = nn.Conv2d(2 * latent + features, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, c in enumerate(channels):
            self.down_blocks.append(ResBlock(channels[i - 1] if i else channels[0], c, emb_dim))
            if i < len(channels) - 1:
                self.downs.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(channels[-1], channels[-1], emb_dim)
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(channels) - 1)):
            self.ups.append(nn.Conv2d(channels[i + 1], channels[i], 3, padding=1))
            self.up_blocks.append(ResBlock(2 * channels[i], channels[i], emb_dim))
        self.out = nn.Conv2d(channels[0], latent, 3, padding=1)

    def forward(self, z_t: torch.Tensor, cond: torch.Tensor, t_frac: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
        """z_t (B, latent, h, w), cond (B, latent + features, h, w); t_frac = t/T and inv_scale = 1/scale, each (B, 1)."""
        emb = self.emb(t_frac, inv_scale)
        x = self.head(torch.cat([z_t, cond], dim=1))
        skips = []
        for i, block in enumerate(self.down_blocks):
            x = block(x, emb)
            if i < len(self.downs):
                skips.append(x)
                x = self.downs[i](x)
        x = self.mid(x, emb)
        for up, block in zip(self.ups, self.up_blocks):
            x = up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.out(F.silu(x))
