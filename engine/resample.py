"""Separable interpolation at arbitrary sample positions (pure numpy).

Used by the bicubic method and by the nodata mask. Positions outside the tile are clamped to the
edge (replicate padding), which only matters at the raster border: inside the raster the tiler
gives every tile enough context.
"""
from __future__ import annotations

import numpy as np


def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5: the bicubic of GDAL, PIL and MATLAB)."""
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (a + 2) * t3 - (a + 3) * t2 + 1
    far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def cubic_taps(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (4, m) and weights (4, m) of the cubic kernel at positions ``pos`` on an axis of length n."""
    base = np.floor(pos).astype(np.int64)
    offsets = np.arange(-1, 3)[:, None]
    idx = base[None, :] + offsets
    w = keys_cubic(pos[None, :] - idx)
    return np.clip(idx, 0, n - 1), w.astype(np.float32)


def cubic_resample(x: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bicubic samples of ``x`` (C×h×w float32) at rows ``ys`` and columns ``xs``: C×len(ys)×len(xs)."""
    _, h, w = x.shape
    ix, wx = cubic_taps(xs, w)
    tmp = np.zeros((x.shape[0], h, len(xs)), dtype=np.float32)
    for k in range(4):
        tmp += x[:, :, ix[k]] * wx[k]
    iy, wy = cubic_taps(ys, h)
    out = np.zeros((x.shape[0], len(ys), len(xs)), dtype=np.float32)
    for k in range(4):
        out += tmp[:, iy[k], :] * wy[k][:, None]
    return out


def nearest_indices(pos: np.ndarray, n: int) -> np.ndarray:
    """Index of the input pixel whose area holds each position (ties go up), clamped to the axis."""
    return np.clip(np.floor(pos + 0.5).astype(np.int64), 0, n - 1)
