"""Where the networks sample: index/weight tables computed from a tile's Grid (pure numpy).

The networks resample by gathering rows and columns with these tables, so the same graph runs
(and exports to ONNX) for every scale and tile size.

Latent alignment. The latent has one cell per 8×8 *global* output pixels: output pixel Y lies in
latent cell floor(Y / 8). The output sample positions continue linearly beyond the requested ones:
output row Y sits at tile-local input coordinate pos(Y) = ys[0] + (Y - out_y0)·r, with r = n_in/n_out
the spacing of ``ys``. A tile's latent covers every output row whose centre falls on the LR tile
(pos in [-0.5, h-0.5]), not only the requested rows, so its content depends on the tile's LR extent
only: rows Y_lo..Y_hi give cells L0 = floor(Y_lo/8) rounded down and L1 = floor(Y_hi/8)+1 rounded up
to a multiple of ``multiple`` (2^depth of the denoiser UNet). Every tile thus downsamples in the same
phase, and the noise of a cell (engine.noise, indexed by global cell) is the same in every tile.
Cell L's centre is pos(8L + 3.5); the conditioning net sees the bicubic LR at pos(8L0) .. pos(8L1-1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..grid import Grid, spacing
from ..resample import cubic_taps

LATENT_FACTOR = 8  # the cell size: one latent cell per 8×8 output pixels (every network and training read it here)
LEVELS = (1, 2, 4, 8)  # feature pyramid of the decoder, in sub-pixels per LR pixel
OUT_TAPS = 2 * len(LEVELS) + 4 + 1  # rows of the output tables: 2 bilinear taps per level, 4 cubic taps, 1 detail row
DETAIL_ROW = OUT_TAPS - 1  # the output pixel's row (column) on the tile's latent-aligned HR grid, weight 1


def unet_multiple(channels) -> int:
    """The alignment of the latent for a denoiser UNet with these level channels (2^depth): its height
    and width must be multiples of it."""
    return 2 ** (len(channels) - 1)


def bilinear_taps(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (2, m) and weights (2, m) of linear interpolation at ``pos`` on an axis of n samples
    (edge-clamped)."""
    base = np.floor(pos)
    frac = (pos - base).astype(np.float32)
    idx = np.stack([base, base + 1]).astype(np.int64)
    return np.clip(idx, 0, n - 1), np.stack([1.0 - frac, frac])


@dataclass(frozen=True)
class AxisTables:
    """The tables of one axis."""

    out_idx: np.ndarray  # (OUT_TAPS, n_out): pyramid levels, the bicubic skip, then the detail row
    out_w: np.ndarray
    lat_idx: np.ndarray  # (2, n_in): latent -> LR pixels (bilinear)
    lat_w: np.ndarray
    hr_idx: np.ndarray  # (4, 8·n_lat): LR -> latent-aligned HR positions (bicubic)
    hr_w: np.ndarray
    cells: np.ndarray  # global latent cell indices (n_lat,)


def axis_tables(pos: np.ndarray, n_in: int, out0: int, multiple: int, scale: float) -> AxisTables:
    """The tables for output positions ``pos`` (tile-local input coordinates) of output pixels
    out0 .. out0+len(pos)-1 over an axis of n_in LR pixels."""
    m = len(pos)
    r = spacing(pos, scale)
    idx, w = [], []
    for k in LEVELS:
        i, wk = bilinear_taps((pos + 0.5) * k - 0.5, n_in * k)
        idx.append(i)
        w.append(wk)
    i, wk = cubic_taps(pos, n_in)
    idx.append(i)
    w.append(wk)
    lo = min(out0, out0 + int(np.ceil((-0.5 - pos[0]) / r)))  # first output pixel centred in the tile
    hi = max(out0 + m - 1, out0 + int(np.floor((n_in - 0.5 - pos[0]) / r)))  # and the last
    first = lo // LATENT_FACTOR // multiple * multiple
    last = -(-(hi // LATENT_FACTOR + 1) // multiple) * multiple
    hr_rows = np.arange(first * LATENT_FACTOR, last * LATENT_FACTOR)
    hr_pos = pos[0] + (hr_rows - out0) * r
    hr_idx, hr_w = cubic_taps(hr_pos, n_in)
    centre0 = pos[0] + (first * LATENT_FACTOR + (LATENT_FACTOR - 1) / 2 - out0) * r
    lat_idx, lat_w = bilinear_taps((np.arange(n_in) - centre0) / (LATENT_FACTOR * r), last - first)
    # the detail row: output pixel out0 + i is pixel out0 + i - 8·first of the latent-aligned HR grid
    idx.append(np.arange(out0, out0 + m, dtype=np.int64)[None] - first * LATENT_FACTOR)
    w.append(np.ones((1, m)))
    return AxisTables(np.concatenate(idx), np.concatenate(w).astype(np.float32), lat_idx, lat_w.astype(np.float32),
                    hr_idx, hr_w.astype(np.float32), np.arange(first, last, dtype=np.int64))


@dataclass(frozen=True)
class Plan:
    """Row and column tables of one tile."""

    rows: AxisTables
    cols: AxisTables

    @classmethod
    def build(cls, h: int, w: int, grid: Grid, multiple: int) -> "Plan":
        return cls(axis_tables(np.asarray(grid.ys, dtype=np.float64), h, grid.out_y0, multiple, grid.scale),
                   axis_tables(np.asarray(grid.xs, dtype=np.float64), w, grid.out_x0, multiple, grid.scale))

    @property
    def latent_shape(self) -> tuple[int, int]:
        return len(self.rows.cells), len(self.cols.cells)

    def arrays(self) -> dict:
        """The tables as numpy arrays (int64 indices, float32 weights), named as the networks' arguments."""
        out = {}
        for axis, p in (("y", self.rows), ("x", self.cols)):
            for name in ("out", "lat", "hr"):
                out[f"{name}_{axis}_idx"] = getattr(p, f"{name}_idx")
                out[f"{name}_{axis}_w"] = getattr(p, f"{name}_w")
        return out

    def tensors(self, device) -> dict:
        """The tables as torch tensors, named as the networks' arguments."""
        import torch

        return {name: torch.from_numpy(a).to(device) for name, a in self.arrays().items()}
