"""Radiometric consistency: project an SR tile so that degrading it gives back the LR exactly.

The degradation is the training one, antialiased bicubic downsampling (engine.resample.downsample):
LR pixel i is the normalised Keys-kernel average of the output pixels whose centres u fall within
|u - i| < 2 (u in LR pixel units), rows and columns separately, LR = Dy · SR · Dxᵀ. The projection
is exact and minimal: SR' = SR + Dy⁺ (LR − Dy · SR · Dxᵀ) Dx⁺ᵀ with the pseudo-inverses
D⁺ = Dᵀ (D Dᵀ)⁻¹, so D(SR') = LR and SR' is the closest such image to SR (least squares). Only
LR pixels whose kernel lies wholly on the tile's output (or is cut by the raster's own edge, as the
global degradation is) are constrained; the tiler's overlap covers the others.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import Grid
from .resample import keys_cubic

SUPPORT = 2.0  # LR pixels: the half-width of the bicubic kernel


def degradation_rows(pos: np.ndarray, n: int, at_start: bool, at_end: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows, D): the LR indices that can be constrained and their degradation matrix (rows × len(pos))."""
    spacing = pos[1] - pos[0] if len(pos) > 1 else 1.0
    lo, hi = pos[0] - spacing / 2, pos[-1] + spacing / 2  # the LR interval the outputs cover
    i = np.arange(n)
    complete = ((i - SUPPORT >= lo) | at_start) & ((i + SUPPORT <= hi) | at_end)
    rows = i[complete & (i + SUPPORT > lo) & (i - SUPPORT < hi)]
    d = keys_cubic(pos[None, :] - rows[:, None].astype(np.float64))
    sums = d.sum(axis=1)
    keep = sums > 1e-6
    rows, d = rows[keep], d[keep]
    return rows, d / d.sum(axis=1, keepdims=True)


def pseudo_inverse(d: np.ndarray) -> np.ndarray:
    """Dᵀ (D Dᵀ)⁻¹ for a full-row-rank D (rows ≤ columns)."""
    return np.linalg.solve(d @ d.T, d).T


def project(sr: np.ndarray, lr: np.ndarray, grid: Grid) -> np.ndarray:
    """``sr`` (C×H×W, sampled at grid.ys × grid.xs) made consistent with ``lr`` (C×h×w)."""
    h, w = lr.shape[1:]
    full_h = grid.in_h or h
    full_w = grid.in_w or w
    ry, dy = degradation_rows(grid.ys, h, grid.in_y0 == 0 and grid.out_y0 == 0,
                              grid.in_y0 + h == full_h and grid.ys[-1] + 1 / grid.scale >= h - 0.5 - 1e-9)
    rx, dx = degradation_rows(grid.xs, w, grid.in_x0 == 0 and grid.out_x0 == 0,
                              grid.in_x0 + w == full_w and grid.xs[-1] + 1 / grid.scale >= w - 0.5 - 1e-9)
    if len(ry) == 0 or len(rx) == 0:
        return sr
    sr64 = sr.astype(np.float64)
    residual = lr[:, ry][:, :, rx] - dy @ sr64 @ dx.T
    return (sr64 + pseudo_inverse(dy) @ residual @ pseudo_inverse(dx).T).astype(np.float32)


@dataclass
class Projected:
    """Any SR method followed by the consistency projection."""

    inner: object

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def deterministic(self) -> bool:
        return self.inner.deterministic

    def halo(self, scale: float) -> int:
        return self.inner.halo(scale) + int(SUPPORT) + 1

    def __call__(self, tile: np.ndarray, grid: Grid, seed: int = 0) -> np.ndarray:
        return project(self.inner(tile, grid, seed), tile, grid)
