"""Building blocks shared by the networks (torch).

No normalisation layer pools over space (no BatchNorm/GroupNorm): that would make every output
pixel depend on the whole tile, and tiled runs would show seams.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def resample(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ_k w[k]·x.index_select(dim, idx[k]) along any axis ``dim``; idx, w: (K, n)."""
    shape = [1] * x.dim()
    shape[dim] = -1
    out = x.index_select(dim, idx[0]) * w[0].reshape(shape)
    for k in range(1, idx.shape[0]):
        out = out + x.index_select(dim, idx[k]) * w[k].reshape(shape)
    return out


def resample2d(x: torch.Tensor, y_idx, y_w, x_idx, x_w) -> torch.Tensor:
    """Separable resampling of NCHW maps, columns first: when upsampling, the column gather (one
    element at a time) then runs on the fewer rows."""
    return resample(resample(x, x_idx, x_w, 3), y_idx, y_w, 2)


def fourier(v: torch.Tensor, dim: int, max_freq: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of a scalar per sample, v: (B, 1)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half, device=v.device, dtype=v.dtype))
    a = v * freqs[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


class Embedding(nn.Module):
    """An MLP on the Fourier features of one or more scalars (each (B, 1))."""

    def __init__(self, inputs: int, dim: int, fourier_dim: int = 32):
        super().__init__()
        self.fourier_dim = fourier_dim
        self.mlp = nn.Sequential(nn.Linear(inputs * fourier_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, *scalars: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([fourier(s, self.fourier_dim) for s in scalars], dim=1))


class ResBlock(nn.Module):
    """Two 3×3 convolutions with a FiLM modulation from an embedding in between."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(x))
        gamma, beta = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + gamma) + beta
        return self.skip(x) + self.conv2(F.silu(h))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
