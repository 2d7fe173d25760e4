"""Conditioning net (stage 2): bicubic-upsampled LR -> a latent-sized guess of the clean latent.

The LR is bicubically sampled at the HR positions of the tile's latent cells (8×8 per cell, see
engine.models.sampling), folded into channels (pixel unshuffle by 8) and refined by a few residual
blocks modulated by 1/scale. Its output is the diffusion condition: its first ``latent`` channels are
the regression latent (the guess of the clean latent the decoder reads); with ``spread``, the next
``latent`` channels are the log of the spread of the true latent around that guess, per cell
(engine.latent.from_residual); and ``features`` more channels, when the net has them, are features
of the LR for the denoiser alone, which the decoder never sees (engine.latent.latent_guess).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Embedding, ResBlock, resample2d
from .sampling import LATENT_FACTOR

TEXTURE_FLOOR = 1e-3  # of the log texture (normalised units: 0.26 DN)


class ConditionNet(nn.Module):
    def __init__(self, bands: int = 3, latent: int = 4, channels: int = 64, blocks: int = 2, emb_dim: int = 64,
                 features: int = 0, spread: bool = False):
        super().__init__()
        self.config = {"bands": bands, "latent": latent, "channels": channels, "blocks": blocks, "emb_dim": emb_dim}
        if features:
            self.config["features"] = features
        if spread:
            self.config["spread"] = True
        self.scale_emb = Embedding(1, emb_dim)
        self.head = nn.Conv2d(bands * LATENT_FACTOR ** 2, channels, 1)
        self.blocks = nn.ModuleList(ResBlock(channels, channels, emb_dim) for _ in range(blocks))
        self.out = nn.Conv2d(channels, latent * (2 if spread else 1) + features, 3, padding=1)
        # the log spread's prior: per channel, a + b·log(texture) + c·log(scale) (training fits it at the start)
        self.spread_prior = nn.Conv2d(2, latent, 1) if spread else None

    def upsample(self, lr, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w) -> torch.Tensor:
        """The bicubic LR at the latent-aligned HR positions (B, bands, 8·h_lat, 8·w_lat)."""
        return resample2d(lr, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w)

    def forward(self, lr, inv_scale, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w) -> torch.Tensor:
        up = self.upsample(lr, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w)
        x = self.head(F.pixel_unshuffle(up, LATENT_FACTOR))
        emb = self.scale_emb(inv_scale)
        for block in self.blocks:
            x = block(x, emb)
        out = self.out(F.silu(x))
        if self.spread_prior is None:
            return out
        n = self.config["latent"]
        prior = self.spread_prior(self.spread_inputs(up, inv_scale))
        return torch.cat([out[:, :n], out[:, n:2 * n] + prior, out[:, 2 * n:]], 1)

    @staticmethod
    def spread_inputs(up: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
        """Per latent cell, the log texture of the LR (the mean absolute difference of neighbouring
        pixels of its band mean; val ×4: correlation 0.79 with the true latent's deviation from the
        regression guess) and −log(1/scale)."""
        m = up.mean(1, keepdim=True)
        grad = F.pad((m[..., :, 1:] - m[..., :, :-1]).abs(), (0, 1)) + F.pad((m[..., 1:, :] - m[..., :-1, :]).abs(), (0, 0, 0, 1))
        texture = torch.log(F.avg_pool2d(grad, LATENT_FACTOR) + TEXTURE_FLOOR)
        return torch.cat([texture, -torch.log(inv_scale).reshape(-1, 1, 1, 1).expand_as(texture)], 1)
