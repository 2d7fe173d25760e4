"""Continuous-scale decoder (stage 1): LR + latent -> HR at any output sample positions.

1. An LR-resolution feature branch of residual blocks, each modulated (FiLM) by guidance maps
   from the latent, bilinearly resampled to the LR pixels, and by an embedding of 1/scale.
2. A scale-aware upsampler: sub-pixel heads make a small pyramid at ×1, ×2, ×4 and ×8 the LR
   resolution; each level is bilinearly gathered at the exact output positions and the levels are
   mixed with per-channel weights predicted from 1/scale, then a 1×1 tail maps to the bands.
3. A bicubic skip (Keys a = -0.5, the same taps as engine.resample) is added.
All resampling is by index/weight tables (engine.models.sampling), so it exports to ONNX.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Embedding, resample2d
from .sampling import LEVELS


class GuidedBlock(nn.Module):
    """Residual block modulated by latent guidance (per pixel) and the scale embedding (per image)."""

    def __init__(self, ch: int, guide_ch: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.guide = nn.Conv2d(guide_ch, 2 * ch, 1)
        self.film = nn.Linear(emb_dim, 2 * ch)

    def forward(self, x: torch.Tensor, guide: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x))
        g_scale, g_shift = self.guide(guide).chunk(2, dim=1)
        e_scale, e_shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + g_scale + e_scale) + g_shift + e_shift
        return x + self.conv2(F.silu(h))


class Decoder(nn.Module):
    def __init__(self, bands: int = 3, latent: int = 4, channels: int = 48, blocks: int = 4,
                 up_channels: int = 8, tail_channels: int = 16, emb_dim: int = 64):
        super().__init__()
        self.config = {"bands": bands, "latent": latent, "channels": channels, "blocks": blocks,
                       "up_channels": up_channels, "tail_channels": tail_channels, "emb_dim": emb_dim}
        self.up_channels = up_channels
        self.scale_emb = Embedding(1, emb_dim)
        self.guide = nn.Sequential(nn.Conv2d(latent, channels, 3, padding=1), nn.SiLU(),
                                   nn.Conv2d(channels, channels, 3, padding=1))
        self.head = nn.Conv2d(bands, channels, 3, padding=1)
        self.blocks = nn.ModuleList(GuidedBlock(channels, channels, emb_dim) for _ in range(blocks))
        self.body_out = nn.Conv2d(channels, channels, 3, padding=1)
        self.levels = nn.ModuleList(nn.Conv2d(channels, up_channels * k * k, 1) for k in LEVELS)
        self.mix = nn.Linear(emb_dim, len(LEVELS) * up_channels)
        self.tail = nn.Sequential(nn.Conv2d(up_channels, tail_channels, 1), nn.SiLU(), nn.Conv2d(tail_channels, bands, 1))

    def forward(self, lr, z, inv_scale, out_y_idx, out_y_w, out_x_idx, out_x_w,
                lat_y_idx, lat_y_w, lat_x_idx, lat_x_w) -> torch.Tensor:
        """lr (B, bands, h, w); z (B, latent, h_lat, w_lat); inv_scale (B, 1); tables from
        sampling.Plan -> (B, bands, n_rows, n_cols)."""
        emb = self.scale_emb(inv_scale)
        guide = resample2d(self.guide(z), lat_y_idx, lat_y_w, lat_x_idx, lat_x_w)
        feat = self.head(lr)
        x = feat
        for block in self.blocks:
            x = block(x, guide, emb)
        x = self.body_out(x) + feat
        mix = torch.softmax(self.mix(emb).reshape(-1, len(LEVELS), self.up_channels), dim=1)
        acc = None
        for i, (k, head) in enumerate(zip(LEVELS, self.levels)):
            p = head(x)
            if k > 1:
                p = F.pixel_shuffle(p, k)
            rows = slice(2 * i, 2 * i + 2)
            p = resample2d(p, out_y_idx[rows], out_y_w[rows], out_x_idx[rows], out_x_w[rows]) * mix[:, i, :, None, None]
            acc = p if acc is None else acc + p
        cubic = slice(2 * len(LEVELS), 2 * len(LEVELS) + 4)
        skip = resample2d(lr, out_y_idx[cubic], out_y_w[cubic], out_x_idx[cubic], out_x_w[cubic])
        return skip + self.tail(acc)
