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


def antialias_cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The n_out×n_in matrix of a PIL-style antialiased bicubic resize (Keys a = -0.5 stretched by
    the downscale factor, weights normalised per output pixel, edges renormalised): the training
    degradation, the same as torch's interpolate(mode="bicubic", antialias=True)."""
    factor = n_in / n_out
    support = 2.0 * max(factor, 1.0)
    stretch = max(factor, 1.0)
    centre = (np.arange(n_out) + 0.5) * factor  # in input pixel-edge coordinates
    lo = np.maximum(np.floor(centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.floor(centre + support + 0.5).astype(np.int64), n_in)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for j in range(n_out):
        idx = np.arange(lo[j], hi[j])
        w = keys_cubic((idx - centre[j] + 0.5) / stretch)
        m[j, idx] = w / w.sum()
    return m


def downsample(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Antialiased bicubic resize of C×h×w to C×out_h×out_w (the degradation LR = D(HR))."""
    my = antialias_cubic_matrix(x.shape[1], out_h)
    mx = antialias_cubic_matrix(x.shape[2], out_w)
    return (my @ x.astype(np.float64) @ mx.T).astype(np.float32)


def cubic_upsample(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bicubic (Keys, a = −0.5) of ``x`` (C×h0×w0) at the pixel centres of an h×w grid over the same
    extent, float64 (the LR on the HR grid, as the metrics compare it)."""
    _, h0, w0 = x.shape
    ys = (np.arange(h) + 0.5) * (h0 / h) - 0.5
    xs = (np.arange(w) + 0.5) * (w0 / w) - 0.5
    return cubic_resample(x.astype(np.float32), ys, xs).astype(np.float64)
