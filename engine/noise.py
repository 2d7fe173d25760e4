"""Counter-based Gaussian noise: a fixed function of (seed, stream, channel, row, col).

Diffusion methods draw their noise on the *global* latent grid, so two overlapping tiles see the
same noise at the same place and a tiled run blends without seams. Each value is a splitmix64
hash of its coordinates turned into a standard normal by Box-Muller. Pure numpy, no state.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LANE = np.uint64(0xD1B54A32D192ED03)  # separates the two uniforms of one Box-Muller pair
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of ``x + golden`` (uint64 arrays, wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _u64(values) -> np.ndarray:
    """Integers (negative ones too) as uint64 bit patterns, at least 1-D."""
    return np.atleast_1d(np.asarray(values, dtype=np.int64)).view(np.uint64)


def hash_grid(seed: int, stream: int, channels, rows, cols) -> np.ndarray:
    """uint64 hashes, shape (len(channels), len(rows), len(cols))."""
    with np.errstate(over="ignore"):
        h = _mix(_mix(_u64(seed)) ^ _u64(stream))  # (1,)
        h = _mix(h ^ _u64(channels))[:, None, None]
        h = _mix(h ^ _u64(rows)[None, :, None])
        return _mix(h ^ _u64(cols)[None, None, :])


def gaussian(seed: int, channels, rows, cols, stream: int = 0) -> np.ndarray:
    """Standard normal float32 noise at the given global channel/row/column indices.

    The value at (c, r, x) depends only on (seed, stream, c, r, x): any window of a larger grid
    equals the same window cut out of the larger result.
    """
    h1 = hash_grid(seed, stream, channels, rows, cols)
    with np.errstate(over="ignore"):
        h2 = _mix(h1 ^ _LANE)
    u1 = ((h1 >> _S11).astype(np.float64) + 1.0) * 2.0 ** -53  # (0, 1]
    u2 = (h2 >> _S11).astype(np.float64) * 2.0 ** -53  # [0, 1)
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)
