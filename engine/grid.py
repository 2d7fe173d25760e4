"""Where the output pixels of one tile fall on its input pixels (pure math, no I/O).

Convention: the centre of input pixel i lies at coordinate i. An output of size ``n_out`` over an
input of size ``n_in`` keeps the extent, so output pixel X has its centre at input coordinate
``(X + 0.5) * n_in / n_out - 0.5``. Every SR method samples its output at exactly these positions,
which is what makes a tiled run equal an untiled one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def output_size(n_in: int, scale: float) -> int:
    """round(n_in * scale), at least 1 (halves round up, as a GIS user expects)."""
    return max(1, int(np.floor(n_in * scale + 0.5)))


def centres(n_in: int, n_out: int, start: int, stop: int, origin: int = 0) -> np.ndarray:
    """Input coordinates of the centres of output pixels ``start..stop-1``, relative to input pixel ``origin``."""
    x = np.arange(start, stop, dtype=np.float64)
    return (x + 0.5) * (n_in / n_out) - 0.5 - origin


@dataclass(frozen=True)
class Grid:
    """The sampling grid of one tile.

    ys, xs: tile-local input coordinates (float64) of the output pixel centres, rows and columns.
    scale: the nominal scale the user asked for (what a model is conditioned on).
    out_y0, out_x0: global output row and column of the tile's first output pixel.
    in_y0, in_x0: global input row and column of the tile's first input pixel.
    in_h, in_w: size of the whole input (0 when unknown).
    """

    ys: np.ndarray
    xs: np.ndarray
    scale: float
    out_y0: int = 0
    out_x0: int = 0
    in_y0: int = 0
    in_x0: int = 0
    in_h: int = 0
    in_w: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    @classmethod
    def whole(cls, h: int, w: int, scale: float) -> "Grid":
        """The grid of an untiled run on an h×w input."""
        oh, ow = output_size(h, scale), output_size(w, scale)
        return cls(centres(h, oh, 0, oh), centres(w, ow, 0, ow), scale, in_h=h, in_w=w)
