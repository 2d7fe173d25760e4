"""Where the output pixels of one tile fall on its input pixels (pure math, no I/O).

Convention: the centre of input pixel i lies at coordinate i. An output of size ``n_out`` over an
input of size ``n_in`` keeps the extent, so output pixel X has its centre at input coordinate
``(X + 0.5) * n_in / n_out - 0.5``. Every SR method samples its output at exactly these positions,
which is what makes a tiled run equal an untiled one.

With a target resolution the output pixel is fixed instead (``Axis``, ``resolution_axis``): the
origin is kept and the output spans n_out × step input pixels, at most one output pixel more than
the input. A preview window is cut on the whole raster's output grid (``snap_window``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


def output_size(n_in: int, scale: float) -> int:
    """round(n_in * scale), at least 1 (halves round up, as a GIS user expects)."""
    return max(1, int(np.floor(n_in * scale + 0.5)))


def centres(n_in: float, n_out: int, start: int, stop: int, origin: float = 0) -> np.ndarray:
    """Input coordinates of the centres of output pixels ``start..stop-1``, relative to input pixel
    ``origin``. ``n_in`` is the length the output spans, in input pixels (the input's size unless the
    output grid is grown, see ``Axis``)."""
    x = np.arange(start, stop, dtype=np.float64)
    return (x + 0.5) * (n_in / n_out) - 0.5 - origin


def spacing(pos: np.ndarray, scale: float) -> float:
    """Input pixels between the centres ``pos`` of consecutive output pixels; 1/scale for a single one."""
    return float(pos[1] - pos[0]) if len(pos) > 1 else 1.0 / scale


@dataclass(frozen=True)
class Grid:
    """The sampling grid of one tile.

    ys, xs: tile-local input coordinates (float64) of the output pixel centres, rows and columns.
    scale: the nominal scale the user asked for (what a model is conditioned on).
    out_y0, out_x0: global output row and column of the tile's first output pixel.
    in_y0, in_x0: global input row and column of the tile's first input pixel.
    in_h, in_w: size of the whole input (0 when unknown).
    out_h, out_w: size of the whole output (0: this grid is the whole output, or it is unknown).
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
    out_h: int = 0
    out_w: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    def widened(self, n: int) -> tuple["Grid", tuple[int, int, int, int]]:
        """This grid with up to ``n`` more output pixels on each side, as far as the whole output goes,
        and the pixels it gained (top, bottom, left, right). A method whose output pixels read their
        neighbours at the output resolution runs on it and crops, so that a tile's edge pixels read
        what they read in a whole run (engine.reach.output_margin)."""

        def grow(pos: np.ndarray, first: int, whole: int) -> tuple[np.ndarray, int, int]:
            if n <= 0 or whole <= 0:
                return pos, 0, 0
            step = spacing(pos, self.scale)
            before, after = min(n, first), max(0, min(n, whole - first - len(pos)))
            return np.concatenate([pos[0] - step * np.arange(before, 0, -1), pos,
                                   pos[-1] + step * np.arange(1, after + 1)]), before, after

        ys, top, bottom = grow(np.asarray(self.ys, dtype=np.float64), self.out_y0, self.out_h)
        xs, left, right = grow(np.asarray(self.xs, dtype=np.float64), self.out_x0, self.out_w)
        return replace(self, ys=ys, xs=xs, out_y0=self.out_y0 - top, out_x0=self.out_x0 - left), (top, bottom, left, right)

    @classmethod
    def whole(cls, h: int, w: int, scale: float) -> "Grid":
        """The grid of an untiled run on an h×w input."""
        oh, ow = output_size(h, scale), output_size(w, scale)
        return cls(centres(h, oh, 0, oh), centres(w, ow, 0, ow), scale, in_h=h, in_w=w)


@dataclass(frozen=True)
class Axis:
    """One axis of an output grid: ``n_out`` output pixels of ``step`` input pixels each, the first
    one starting at input coordinate ``shift`` (input pixel i spans [i, i+1) here). A window's axis
    (``snap_window``) also says where it lies on the whole raster: its first output pixel is pixel
    ``first`` of the whole raster's output grid, its input starts at the whole raster's input pixel
    ``origin``, and the whole raster is ``whole`` input pixels and ``total`` output pixels long (0: the
    axis is the whole raster's)."""

    n_out: int
    step: float
    shift: float = 0.0
    first: int = 0
    origin: int = 0
    whole: int = 0
    total: int = 0

    @property
    def span(self) -> float:
        """The length of the output, in input pixels."""
        return self.n_out * self.step

    def centres(self, start: int, stop: int, origin: float = 0) -> np.ndarray:
        """Input coordinates (centre convention, as ``centres``) of output pixels ``start..stop-1``,
        relative to input pixel ``origin``."""
        return centres(self.span, self.n_out, start, stop, origin - self.shift)


def scale_axis(n_in: int, scale: float) -> Axis:
    """round(n_in × scale) pixels over exactly the input's extent."""
    n_out = output_size(n_in, scale)
    return Axis(n_out, n_in / n_out)


def resolution_axis(n_in: int, pixel: float, target: float) -> Axis:
    """Output pixels of exactly ``target`` map units over an axis of ``n_in`` pixels of ``pixel`` map
    units: the origin is kept and the extent grows by less than one output pixel to whole pixels."""
    step = target / pixel
    n_out = max(1, math.ceil(n_in / step - 1e-9))
    return Axis(n_out, step)


def snap_window(axis: Axis, n_in: int, start: int, stop: int, halo: int = 0) -> tuple[int, int, Axis]:
    """The output pixels of ``axis`` (a whole-raster axis) that cover input pixels [start, stop),
    as the input window (a, b) that holds them, widened by ``halo`` input pixels on each side
    within the raster (the context a method reads there in a whole run), and the axis of that
    window's output, which lies on the whole raster's output grid pixel for pixel."""
    first = max(0, math.floor(start / axis.step + 1e-9))
    last = min(axis.n_out, max(first + 1, math.ceil(stop / axis.step - 1e-9)))
    a = math.floor(first * axis.step + 1e-9)
    b = min(n_in, max(a + 1, math.ceil(last * axis.step - 1e-9)))
    a, b = max(0, a - halo), min(n_in, b + halo)
    return a, b, Axis(last - first, axis.step, first * axis.step - a, first, a, n_in, axis.total or axis.n_out)
