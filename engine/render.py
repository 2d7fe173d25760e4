"""The tiles of a run, below engine.pipeline: plan them, read and fill each, run the method, blend
them into the output cells and write each cell once it is final. ``render`` is that loop, written
once: the pipeline runs it here (``run_here``) on every cell, and engine.cluster runs it block by
block on Dask workers (the same cells from the same tiles in the same order, so the same bytes). An executor
takes a ``TileJob`` and fills and commits its outputs; the pipeline (engine.pipeline.superresolve)
opens the input, builds the method and plans the tiles, and hands the job to one."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import output, raster
from .errors import Cancelled, LatentSRError
from .grid import Grid
from .latent import CALL_DONE
from .resample import nearest_indices
from .tiling import Cells, TilePlan

log = logging.getLogger(__name__)

FILL_ITERATIONS = 2  # nodata is filled from valid neighbours this many pixels deep


def fill_invalid(x: np.ndarray, valid: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Nodata pixels take the mean of their valid 3×3 neighbours, ``FILL_ITERATIONS`` deep; what is
    still empty after that takes the band's fill value. Local, so tiles agree, and the SR kernel sees
    plausible values instead of the nodata value next to valid pixels."""
    if valid.all():
        return x
    x = np.where(valid, x, 0.0).astype(np.float32)
    known = valid.astype(np.float32)
    for _ in range(FILL_ITERATIONS):
        if known.all():
            break
        xp = np.pad(x * known, ((0, 0), (1, 1), (1, 1)))
        kp = np.pad(known, ((0, 0), (1, 1), (1, 1)))
        h, w = x.shape[1:]
        total = sum(xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
        count = sum(kp[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
        grow = (known == 0) & (count > 0)
        x = np.where(grow, total / np.maximum(count, 1), x)
        known = np.maximum(known, grow.astype(np.float32))
    return np.where(known > 0, x, fill[:, None, None]).astype(np.float32)


def to_storage(x: np.ndarray, norms: list[raster.BandNorm], dtype: np.dtype,
               nodata: Sequence[float | None], valid: np.ndarray) -> np.ndarray:
    """Normalised SR values back to the input's units and type; invalid pixels get nodata, and a
    valid pixel that would land on the nodata value is moved one step off it."""
    out = np.empty(x.shape, dtype=dtype)
    for c, norm in enumerate(norms):
        v = norm.inverse(x[c])
        nd = nodata[c]
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            v = np.clip(np.rint(v), info.min, info.max)
            if nd is not None:
                v[(v == nd) & valid[c]] = nd + 1 if nd < info.max else nd - 1
            v[~valid[c]] = nd if nd is not None else 0
        else:
            finfo = np.finfo(dtype)  # values beyond the type's range are clipped to it, never made infinite
            v = np.clip(v, finfo.min, finfo.max).astype(dtype)
            if nd is not None and not np.isnan(nd):
                v[(v == nd) & valid[c]] = np.nextafter(dtype.type(nd), dtype.type(np.inf))
            v[~valid[c]] = nd if nd is not None else np.nan
        out[c] = v
    return out


@dataclass(frozen=True)
class TileJob:
    """What the pipeline hands an executor: the request (engine.pipeline.Request), the input as
    opened (``src``, clipped to ``window`` when a part is processed; ``window`` is that pixel window
    of the whole input, None for all of it), its description, the band norms of the whole input, the
    method and the tile plan."""

    request: object
    src: object
    info: raster.RasterInfo
    norms: list
    method: object
    plan: TilePlan
    window: tuple[int, int, int, int] | None = None


def run_here(job: TileJob, progress: Callable[[float], None], is_cancelled: Callable[[], bool]) -> None:
    """The executor of a run in this process: every tile through ``render`` into the outputs, which
    are put in place together at the end (commit_outputs)."""
    outputs = open_outputs(job.request, job.src, job.info, job.plan)

    def fill() -> None:
        render(job.request, job.src, job.info, job.norms, job.method, job.plan, outputs, job.plan.cells, progress,
               is_cancelled)
        if is_cancelled():
            raise Cancelled()

    commit_outputs(outputs, fill)


def open_outputs(req, src, info: raster.RasterInfo, plan: TilePlan, virtual: bool = False) -> list:
    """The output (and the uncertainty output, if asked) as output.OutputRaster; ``virtual`` ones
    are assembled from shards instead of written window by window."""
    n_bands = len(info.bands)
    outputs = [output.OutputRaster(req.output, src, info, plan.out_w, plan.out_h, cog=req.cog, axes=plan.axes,
                                   virtual=virtual)]
    try:
        if req.uncertainty:
            outputs.append(output.OutputRaster(req.uncertainty, src, info, plan.out_w, plan.out_h, dtype=raster.FLOAT32,
                                               nodata=[math.nan] * n_bands, cog=req.cog, axes=plan.axes,
                                               virtual=virtual))
    except BaseException:
        outputs[0].discard()
        raise
    return outputs


def commit_outputs(outputs: list, fill: Callable[[], None]) -> None:
    """``fill()`` the outputs, then put them all in place together, the main one last
    (output.commit_together). On any failure or cancel every output is discarded, and each final
    name keeps the file it held before the run."""
    try:
        fill()
    except BaseException:
        for out in outputs:
            out.discard()
        raise
    output.commit_together(list(reversed(outputs)))


def render(req, src, info: raster.RasterInfo, norms: list[raster.BandNorm], method, plan: TilePlan,
           writers: list, cells: Cells, progress: Callable[[float], None], is_cancelled: Callable[[], bool]) -> int:
    """Blend the tiles that reach the output cells ``cells`` (plan.reach: for a block of the output,
    also the tiles of the row above it and the column to its left that its blend needs) and write
    those cells, each once it is final, to ``writers`` (the output, then the uncertainty, each with
    ``write(data, x, y, valid)`` and ``flush()``, in the output's pixel coordinates). The tiles are
    added to a cell in the same order whatever ``cells`` is, so a block gets the same bytes as a
    whole run. ``progress`` gets the fraction of this call's tiles done, ``is_cancelled`` is asked
    before every tile. Returns the number of tiles run."""
    (ax, ay), rows, cols, row_edges, col_edges = plan.axes, plan.rows, plan.cols, plan.row_edges, plan.col_edges
    fill = np.array([n.fill for n in norms], dtype=np.float32)
    n_bands = len(info.bands)
    seeds = sample_seeds(req.options.seed, req.options.samples)
    pending: dict[tuple[int, int], tuple[list[np.ndarray], np.ndarray]] = {}
    tile_rows, tile_cols = plan.reach(cells)
    total = len(tile_rows) * len(tile_cols)
    for iy in tile_rows:
        ty = rows[iy]
        for ix in tile_cols:
            tx = cols[ix]
            if is_cancelled():
                raise Cancelled()
            stored = raster.read_window(src, info, tx.in_start, ty.in_start, tx.in_stop - tx.in_start, ty.in_stop - ty.in_start)
            valid = raster.read_valid(src, info, stored, tx.in_start, ty.in_start)
            x = np.stack([norms[c].forward(stored[c].astype(np.float64)) for c in range(n_bands)])
            x = fill_invalid(x, valid, fill)
            grid = Grid(  # placed on the whole raster, also in a window (engine.grid.Axis)
                ys=ay.centres(ty.out_start, ty.out_stop, ty.in_start),
                xs=ax.centres(tx.out_start, tx.out_stop, tx.in_start),
                scale=plan.scale, out_y0=ay.first + ty.out_start, out_x0=ax.first + tx.out_start,
                in_y0=ay.origin + ty.in_start, in_x0=ax.origin + tx.in_start,
                in_h=ay.whole or info.height, in_w=ax.whole or info.width,
                out_h=ay.total or ay.n_out, out_w=ax.total or ax.n_out)
            k = (iy - tile_rows.start) * len(tile_cols) + ix - tile_cols.start

            def within(fraction: float, k: int = k) -> None:  # inside the tile: between two network calls
                if is_cancelled():
                    raise Cancelled()
                progress((k + fraction) / total)

            layers = sample_layers(method, x, grid, seeds, n_bands, bool(req.uncertainty), within)
            weight = ty.weights[:, None] * tx.weights[None, :]
            out_valid = valid[:, nearest_indices(grid.ys, valid.shape[1])][:, :, nearest_indices(grid.xs, valid.shape[2])]
            scatter(pending, [layer * weight for layer in layers], out_valid, ty.out_start, tx.out_start, iy, ix,
                    row_edges, col_edges, cells)
            if iy in cells.rows and ix in cells.cols:  # final now (a context tile's own cell is not the block's)
                (acc, *extra), ok = pending.pop((iy, ix))
                writers[0].write(to_storage(acc, norms, info.dtype, info.nodata, ok), col_edges[ix], row_edges[iy], ok)
                if extra:
                    std = np.stack([extra[0][c] * norms[c].scale for c in range(n_bands)]).astype(np.float32)
                    writers[1].write(np.where(ok, std, np.float32(np.nan)), col_edges[ix], row_edges[iy], ok)
            progress((k + 1) / total)
        for out in writers:  # this row of cells is final: out of the block cache with it
            out.flush()
    return total


def check_pending_memory(rows: list, out_w: int, n_bands: int, layers: int) -> None:
    """Refuse up front a run whose row of pending output cells (a tile's output height by the whole
    output width) would not fit in half of the physical memory."""
    tile_h = max(t.out_stop - t.out_start for t in rows)
    need = 2 * tile_h * out_w * n_bands * (4 * layers + 1)
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > memory / 2:
        raise LatentSRError(f"a row of tiles of this {out_w}-pixel-wide output needs about {need / 2**30:,.1f} GiB of "
                            f"memory, more than half of the {memory / 2**30:,.1f} GiB here: use a smaller --tile "
                            "or clip the input (--extent)")


def sample_seeds(seed: int, samples: int) -> list[int]:
    """The seed itself for one sample; for K samples, K seeds derived from it (independent streams)."""
    if samples == 1:
        return [seed]
    return [int(s) for s in np.random.SeedSequence([seed, samples]).generate_state(samples, dtype=np.uint32)]


def sample_layers(method, x: np.ndarray, grid: Grid, seeds: list[int], n_bands: int, with_std: bool,
                  within: Callable[[float], None] | None = None) -> list[np.ndarray]:
    """The SR of a tile (the mean of the samples when there are several) and, if asked, the
    per-pixel standard deviation of the samples (ddof = 1), both in normalised units. Several
    samples are folded into running sums (Welford), so memory does not grow with their number.
    ``within(fraction of the tile)`` is called after every sample and every network call (it may
    raise Cancelled)."""
    mean = m2 = None
    for k, seed in enumerate(seeds, start=1):
        token = CALL_DONE.set(None if within is None else lambda f, k=k: within((k - 1 + f) / len(seeds)))
        try:
            sr = method(x, grid, seed)
        finally:
            CALL_DONE.reset(token)
        if within is not None:
            within(k / len(seeds))
        if sr.shape != (n_bands, *grid.shape):
            raise LatentSRError(f"method {method.name} returned shape {sr.shape}, expected {(n_bands, *grid.shape)}")
        if len(seeds) == 1:
            return [sr]
        sr = sr.astype(np.float64)
        if mean is None:
            mean, m2 = sr.copy(), np.zeros_like(sr)
            continue
        delta = sr - mean
        mean += delta / k
        m2 += delta * (sr - mean)
    layers = [mean.astype(np.float32)]
    if with_std:
        layers.append(np.sqrt(m2 / (len(seeds) - 1)).astype(np.float32))
    return layers


def scatter(pending: dict, layers: list[np.ndarray], valid: np.ndarray, y0: int, x0: int, iy: int, ix: int,
            row_edges: list[int], col_edges: list[int], cells: Cells) -> None:
    """Add the weighted layers of tile (iy, ix) into the output cells of ``cells`` they overlap. Cell
    (i, j) spans rows row_edges[i]:row_edges[i+1] and columns col_edges[j]:col_edges[j+1]; only
    tiles (≤ i, ≤ j) reach it, so it is final once tile (i, j) is added."""
    n_bands, h, w = layers[0].shape
    cy = max(iy, cells.rows.start)
    while cy < cells.rows.stop and row_edges[cy] < y0 + h:
        cx = max(ix, cells.cols.start)
        while cx < cells.cols.stop and col_edges[cx] < x0 + w:
            r0, r1 = row_edges[cy], min(row_edges[cy + 1], y0 + h)
            c0, c1 = col_edges[cx], min(col_edges[cx + 1], x0 + w)
            if (cy, cx) not in pending:
                shape = (n_bands, row_edges[cy + 1] - row_edges[cy], col_edges[cx + 1] - col_edges[cx])
                pending[(cy, cx)] = ([np.zeros(shape, np.float32) for _ in layers], np.zeros(shape, bool))
            accs, ok = pending[(cy, cx)]
            for acc, layer in zip(accs, layers):
                acc[:, :r1 - r0, :c1 - c0] += layer[:, r0 - y0:r1 - y0, c0 - x0:c1 - x0]
            ok[:, :r1 - r0, :c1 - c0] = valid[:, r0 - y0:r1 - y0, c0 - x0:c1 - x0]
            cx += 1
        cy += 1
