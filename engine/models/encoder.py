"""Residual autoencoder encoder (stage 1, training only): HR and the bicubic LR -> latent.

It encodes what the LR lacks, the residual r = HR − bicubic(LR), into ``latent`` channels at HR/8
(one cell per 8×8 output pixels): a linear analysis of each 8×8 block of r (all bands), plus a
learned correction by a strided CNN on (r, bicubic LR). Stage 1 (training/stage1.py) starts the
analysis as the leading principal components of the residual's blocks on training batches, scaled
to unit variance, and the correction at zero, so the latent carries the residual from the first
step; both are then trained. A purely learned latent never came alive here: the decoder learned
to ignore it before it carried anything (docs/MODELS.md). HR height and width must be multiples of 8.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .sampling import LATENT_FACTOR


def residual_blocks(hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
    """The residual's 8×8 blocks as rows (N, bands·64), in pixel_unshuffle's channel order."""
    r = F.pixel_unshuffle(hr - lr_up, LATENT_FACTOR)
    return r.permute(0, 2, 3, 1).reshape(-1, r.shape[1])


def pca(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean (D,), the k leading principal directions (k, D, orthonormal rows) and their standard
    deviations (k,) of the rows (N, D)."""
    mean = rows.mean(0)
    x = (rows - mean).double()
    values, vectors = torch.linalg.eigh(x.T @ x / max(1, len(rows) - 1))
    order = values.argsort(descending=True)[:k]
    return mean, vectors[:, order].T.to(rows.dtype), values[order].clamp_min(1e-12).sqrt().to(rows.dtype)


class Encoder(nn.Module):
    def __init__(self, bands: int = 3, latent: int = 16, channels: tuple[int, ...] = (32, 64, 96)):
        super().__init__()
        self.config = {"bands": bands, "latent": latent, "channels": list(channels)}
        self.analysis = nn.Conv2d(bands * LATENT_FACTOR ** 2, latent, 1)
        self.head = nn.Conv2d(2 * bands, channels[0], 3, padding=1)
        stages = []
        c_in = channels[0]
        for c in channels:
            stages += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*stages)
        self.out = nn.Conv2d(c_in, latent, 3, padding=1)

    def set_analysis(self, mean: torch.Tensor, components: torch.Tensor, std: torch.Tensor) -> None:
        """The analysis as the unit-variance PCA code: (components·(block − mean)) / std."""
        with torch.no_grad():
            w = components / std[:, None]
            self.analysis.weight.copy_(w[:, :, None, None])
            self.analysis.bias.copy_(-(w @ mean))

    def forward(self, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        """The latent (B, latent, H/8, W/8)."""
        r = hr - lr_up
        learned = self.out(self.body(F.silu(self.head(torch.cat([r, lr_up], dim=1)))))
        return self.analysis(F.pixel_unshuffle(r, LATENT_FACTOR)) + learned
