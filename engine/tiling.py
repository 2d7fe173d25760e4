"""Tile plans and blend weights (pure math, no I/O).

The input is cut along each axis into windows of ``tile`` pixels that overlap by ``overlap``. Each
window owns the output pixels whose centres fall inside it, and a blend weight for each of them.
Between two neighbouring windows the weight moves from one to the other across a transition
centred in their overlap. The weights of an axis are built as differences of cumulative ramps,
so they are never negative and sum to exactly 1 at every output pixel, and the first ``margin``
input pixels inside an interior window edge get weight 0, which is where a method lacks context.
A method that needs more context than half the overlap gives is read with a ``halo`` of more input
pixels around each window, so what it sees does not depend on the overlap.
A 2-D tile's weight is the outer product of its row and column weights, so it sums to 1 too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .grid import Axis

RAMPS = ("cosine", "linear")


@dataclass(frozen=True)
class AxisTile:
    """One window along an axis: input pixels [in_start, in_stop) are read (the window and its halo),
    output pixels [out_start, out_stop) are its own."""

    in_start: int
    in_stop: int
    out_start: int
    out_stop: int
    weights: np.ndarray  # float32, one per output pixel in [out_start, out_stop); all > 0 at both ends


def window_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Starts of windows of ``tile`` pixels stepping by ``tile - overlap``; the last one ends at n."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step))
    starts.append(n - tile)
    return starts


def ramp(t: np.ndarray, kind: str = "cosine") -> np.ndarray:
    """A rise from 0 (t ≤ 0) to 1 (t ≥ 1), linear or raised-cosine."""
    t = np.clip(t, 0.0, 1.0)
    if kind == "linear":
        return t
    if kind == "cosine":
        return 0.5 - 0.5 * np.cos(np.pi * t)
    raise ValueError(f"unknown ramp '{kind}': choose one of {', '.join(RAMPS)}")


def axis_plan(n_in: int, n_out: int | Axis, tile: int, overlap: int, margin: float, kind: str = "cosine",
              halo: int = 0) -> list[AxisTile]:
    """The windows of one axis and the blend weights of their output pixels. ``n_out`` is the output
    size over exactly the input's extent, or the output grid's ``Axis``.

    ``margin`` (input pixels) is how far inside an interior window edge the weight stays 0; it is
    capped at half the overlap. The transition between two windows is centred in their overlap and
    spans ``overlap - 2 * margin`` input pixels (a hard switch when that is 0). Each window is read
    with ``halo`` more input pixels on both sides (within the input): its ``in_start``/``in_stop``,
    so a method sees margin + halo pixels beyond the output it is trusted on.
    """
    starts = window_starts(n_in, tile, overlap)
    stops = [min(s + tile, n_in) for s in starts]
    margin = min(float(margin), overlap / 2.0)
    half = overlap / 2.0 - margin
    axis = n_out if isinstance(n_out, Axis) else Axis(n_out, n_in / n_out)
    n_out = axis.n_out

    def edges(lo: int, hi: int) -> np.ndarray:
        """Edge coordinate (input pixel i spans [i, i+1)) of output pixel centres lo..hi-1; a grown
        grid's last pixels belong to the last window."""
        return np.clip(axis.centres(lo, hi) + 0.5, 0.0, np.nextafter(n_in, 0))

    def handed_over(k: int, edge: np.ndarray) -> np.ndarray:
        """S_k: how far the hand-over from window k to k+1 has gone at these edge coordinates."""
        mid = (starts[k + 1] + stops[k]) / 2.0
        if half > 0:
            return ramp((edge - (mid - half)) / (2 * half), kind)
        return (edge >= mid).astype(np.float64)

    plan = []
    for k, (a, b) in enumerate(zip(starts, stops)):
        # Only the output pixels whose centre can fall in [a, b): the cost is the window's, not the axis's.
        lo = 0 if k == 0 else max(0, int(np.floor((a - axis.shift) / axis.step - 0.5)) - 1)
        hi = n_out if k == len(starts) - 1 else min(n_out, int(np.ceil((b - axis.shift) / axis.step - 0.5)) + 1)
        edge = edges(lo, hi)
        w = handed_over(k - 1, edge) if k > 0 else np.ones(hi - lo)
        if k < len(starts) - 1:
            w = w - handed_over(k, edge)
        idx = np.flatnonzero((edge >= a) & (edge < b) & (w > 0))
        if idx.size == 0:  # a window squeezed between its neighbours owns no output pixel
            continue
        first, last = int(idx[0]), int(idx[-1]) + 1
        plan.append(AxisTile(max(0, a - halo), min(n_in, b + halo), lo + first, lo + last,
                             w[first:last].astype(np.float32)))
    return plan


def required_margin(context: int, overlap: int) -> float:
    """The margin a method with ``context`` halo pixels gets from an overlap."""
    return min(float(context), overlap / 2.0)


@dataclass(frozen=True)
class Cells:
    """A rectangle of the output cells of a TilePlan: cell rows ``rows`` by cell columns ``cols``."""

    rows: range
    cols: range


@dataclass(frozen=True)
class TilePlan:
    """The tiles of a run and the output cells they blend into. Cell (i, j) spans output rows
    row_edges[i]:row_edges[i+1] and columns col_edges[j]:col_edges[j+1]; tile (i, j) is the last
    one that reaches it."""

    scale: float
    axes: tuple  # (x, y) engine.grid.Axis: the output grid
    rows: list
    cols: list

    @property
    def out_w(self) -> int:
        return self.axes[0].n_out

    @property
    def out_h(self) -> int:
        return self.axes[1].n_out

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def row_edges(self) -> list[int]:
        return [t.out_start for t in self.rows] + [self.out_h]

    @property
    def col_edges(self) -> list[int]:
        return [t.out_start for t in self.cols] + [self.out_w]

    @property
    def cells(self) -> Cells:
        """Every cell of the output."""
        return Cells(range(len(self.rows)), range(len(self.cols)))

    def reach(self, cells: Cells) -> tuple[range, range]:
        """The tile rows and columns whose tiles reach ``cells``: from the first that reaches its top
        row (left column) to its last. The blend of a cell sums every one of them that reaches it,
        in row-major order."""
        rows = range(first_reaching(self.rows, cells.rows.start), cells.rows.stop)
        return rows, range(first_reaching(self.cols, cells.cols.start), cells.cols.stop)

    def window(self, cells: Cells) -> tuple[int, int, int, int]:
        """(x0, y0, width, height) of ``cells`` in output pixels."""
        row_edges, col_edges = self.row_edges, self.col_edges
        x0, y0 = col_edges[cells.cols.start], row_edges[cells.rows.start]
        return x0, y0, col_edges[cells.cols.stop] - x0, row_edges[cells.rows.stop] - y0


def first_reaching(tiles: list[AxisTile], cell: int) -> int:
    """The first window of an axis that reaches its cell ``cell`` (which starts where window
    ``cell`` starts): the blend of that cell needs every window from there on, in order."""
    start = tiles[cell].out_start
    return next(i for i, t in enumerate(tiles) if t.out_stop > start)


def tile_plan(width: int, height: int, scale: float, axes: tuple[Axis, Axis], tile: int, overlap: int,
              context: int) -> TilePlan:
    """The tiles of a width×height input, of ``tile`` input pixels overlapping by ``overlap``, each read
    with ``context`` pixels (a method's halo and the nodata fill's) around the part it is trusted on:
    the overlap gives up to half of it (required_margin), a wider read the rest, so a method sees as
    much in a tile as in a whole run whatever the overlap."""
    margin = required_margin(context, overlap)
    extra = math.ceil(context - margin)
    return TilePlan(scale, tuple(axes), axis_plan(height, axes[1], tile, overlap, margin, halo=extra),
                    axis_plan(width, axes[0], tile, overlap, margin, halo=extra))
