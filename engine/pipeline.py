"""The tiled super-resolution run: validate the request, stream tiles through a method, blend
them, and write a georeferenced GeoTIFF. Shared by the CLI and the Processing algorithm."""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import precision, raster
from .errors import Cancelled, LatentSRError
from .grid import Axis, Grid, resolution_axis, scale_axis, snap_window
from .latent import CALL_DONE, check_detail
from .methods import BACKENDS, DEFAULTS, DEVICES, MethodOptions, build_method
from .projection import Projected
from .registry import METHODS, STOCHASTIC
from .resample import nearest_indices
from .tiling import axis_plan, required_margin

log = logging.getLogger(__name__)

MAX_SCALE = 8.0
MIN_TILE = 16
MAX_SAMPLES = 1000  # --samples keeps running sums (Welford), so memory does not grow with it; time does
MAX_SEED = 2**63 - 1
FILL_ITERATIONS = 2  # nodata is filled from valid neighbours this many pixels deep


@dataclass
class Request:
    """Everything a run needs; the same fields as the CLI flags and the Processing parameters."""

    input: str
    output: str
    scale: float | None = None
    target_resolution: float | None = None
    method: str = DEFAULTS.method
    bands: Sequence[int] | None = None
    steps: int | None = None
    detail: float | None = None  # the diffusion methods' faithful ↔ detailed control (None: the card's default)
    backend: str = DEFAULTS.backend
    device: str = DEFAULTS.device
    tile: int = DEFAULTS.tile
    overlap: int = DEFAULTS.overlap
    seed: int = DEFAULTS.seed
    samples: int = 1
    uncertainty: str | None = None
    cog: bool = False
    model: str | None = None
    extent: tuple[float, float, float, float] | None = None  # (xmin, ymin, xmax, ymax) in the input's CRS
    consistency: bool = False  # project each tile so that its degradation matches the LR (engine.projection)
    cluster: str | None = None  # a Dask scheduler address or local:N: run with engine.cluster.superresolve
    precision: str = "auto"  # the learned methods' arithmetic (engine.precision)

    def check(self) -> None:
        """Validate what can be validated without opening the input."""
        if self.method not in METHODS:
            raise LatentSRError(f"unknown method '{self.method}': choose one of {', '.join(METHODS)}")
        if self.backend not in BACKENDS:
            raise LatentSRError(f"unknown backend '{self.backend}': choose one of {', '.join(BACKENDS)}")
        if self.device not in DEVICES:
            raise LatentSRError(f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")
        precision.check(self.precision)
        if self.target_resolution is None:
            if self.scale is None:
                raise LatentSRError("give a scale or a target resolution")
            check_scale(self.scale)
        elif not (math.isfinite(self.target_resolution) and self.target_resolution > 0):
            raise LatentSRError(f"target resolution must be a positive number, got {self.target_resolution}")
        if self.extent is not None:
            check_extent(self.extent)
        if self.tile < MIN_TILE:
            raise LatentSRError(f"tile size must be at least {MIN_TILE} pixels, got {self.tile}")
        if self.overlap < 0:
            raise LatentSRError(f"overlap must not be negative, got {self.overlap}")
        if self.overlap >= self.tile:
            raise LatentSRError(f"overlap ({self.overlap}) must be smaller than the tile size ({self.tile})")
        if self.steps is not None and self.steps < 1:
            raise LatentSRError(f"steps must be at least 1, got {self.steps}")
        if self.detail is not None:
            check_detail(self.detail)
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise LatentSRError(f"samples must be at least 1 and at most {MAX_SAMPLES}, got {self.samples}")
        if self.samples > 1 and self.method not in STOCHASTIC:
            raise LatentSRError(f"several samples need a diffusion method ({' or '.join(STOCHASTIC)}); {self.method} is deterministic")
        if self.uncertainty:
            if self.samples < 2:
                raise LatentSRError("an uncertainty output needs at least 2 samples")
        if not 0 <= self.seed <= MAX_SEED:
            raise LatentSRError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        raster.check_tif_name(self.output, "output", vrt=bool(self.cluster))
        raster.check_tif_name(self.uncertainty, "uncertainty output", vrt=bool(self.cluster))


def check_extent(extent: tuple[float, float, float, float]) -> None:
    xmin, ymin, xmax, ymax = extent
    if not all(math.isfinite(v) for v in extent):
        raise LatentSRError(f"the extent must be four finite numbers, got {','.join(f'{v:g}' for v in extent)}")
    if not (xmin < xmax and ymin < ymax):
        raise LatentSRError(f"the extent must have xmin < xmax and ymin < ymax, got {','.join(f'{v:g}' for v in extent)}")


def check_scale(scale: float) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise LatentSRError(f"scale must be a number, got {scale}")
    if not 1.0 < scale <= MAX_SCALE:
        raise LatentSRError(f"scale must be greater than 1 and at most {MAX_SCALE:g}, got {scale:g}")


def scale_for_resolution(geotransform: tuple[float, ...] | None, target: float) -> float:
    """The scale that turns the input's pixel size into ``target`` map units (geometric mean of x and y)."""
    if geotransform is None:
        raise LatentSRError("the input has no geotransform, so a target resolution has no meaning: give a scale")
    px, py = raster.pixel_size(geotransform)
    scale = math.sqrt(px * py) / target
    if scale <= 1.0:
        raise LatentSRError(f"target resolution {target:g} is not finer than the input's pixel size {math.sqrt(px * py):g}")
    if scale > MAX_SCALE:
        raise LatentSRError(f"target resolution {target:g} needs scale {scale:.3g}, above the maximum {MAX_SCALE:g}")
    return scale


def output_axes(width: int, height: int, geotransform: tuple[float, ...] | None, scale: float,
                target: float | None = None, window: tuple[int, int, int, int] | None = None,
                halo: int = 0) -> tuple[Axis, Axis, tuple[int, int, int, int] | None]:
    """The output grid (x and y ``Axis``) of a width×height input: ``scale`` keeps the extent, a
    ``target`` resolution gives exactly target × target pixels (origin kept, extent grown by less
    than one output pixel). With a pixel ``window`` (x0, y0, w, h) the output is the part of the
    whole raster's output grid that covers it, and the window returned is the input that holds it,
    with ``halo`` more pixels around it (within the raster) for the method's context."""
    if target is None:
        ax, ay = scale_axis(width, scale), scale_axis(height, scale)
    else:
        px, py = raster.pixel_size(geotransform)
        ax, ay = resolution_axis(width, px, target), resolution_axis(height, py, target)
    if window is None:
        return ax, ay, None
    x0, y0, w, h = window
    xa, xb, ax = snap_window(ax, width, x0, x0 + w, halo)
    ya, yb, ay = snap_window(ay, height, y0, y0 + h, halo)
    return ax, ay, (xa, ya, xb - xa, yb - ya)


def output_plan(path: str, scale: float, target: float | None = None,
                extent: tuple[float, float, float, float] | None = None) -> tuple[int, int, float, float]:
    """What a run on ``path`` would write: width, height and the pixel size in map units (0, 0
    without a geotransform), from the same grid as the run (``output_axes``)."""
    info = raster.describe(raster.open_raster(path), None)
    window = raster.extent_window(info, extent) if extent else None
    if target is not None:
        scale = scale_for_resolution(info.geotransform, target)
    ax, ay, _ = output_axes(info.width, info.height, info.geotransform, scale, target, window)
    if info.geotransform is None:
        return ax.n_out, ay.n_out, 0.0, 0.0
    px, py = raster.pixel_size(info.geotransform)
    return ax.n_out, ay.n_out, px * ax.step, py * ay.step


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


@dataclass
class Result:
    output: str
    width: int
    height: int
    scale: float
    method: str
    tiles: int
    seconds: float


def superresolve(req: Request, progress: Callable[[float], None] | None = None,
                 is_cancelled: Callable[[], bool] | None = None, runner: Callable | None = None) -> Result:
    """Run ``req``. ``progress`` gets a fraction in [0, 1]; ``is_cancelled`` is asked before every
    tile. On any failure or cancel no output file is left behind. ``runner`` replaces run_tiles
    (same arguments, and the input's pixel window as ``window``): engine.cluster passes its own."""
    start = time.perf_counter()
    progress = progress or (lambda f: None)
    is_cancelled = is_cancelled or (lambda: False)
    req.check()
    bands = list(req.bands) if req.bands else None
    whole = raster.open_raster(req.input)
    info = raster.describe(whole, bands)
    window = raster.extent_window(info, req.extent) if req.extent else None
    scale = req.scale if req.target_resolution is None else scale_for_resolution(info.geotransform, req.target_resolution)
    raster.check_outputs({"output": req.output, "uncertainty output": req.uncertainty}, {"input": (req.input, whole)})
    method = make_method(req)
    # a window is read with the context the method has in a whole run, so that it gives the same pixels
    axes = output_axes(info.width, info.height, info.geotransform, scale, req.target_resolution, window,
                       halo=method.halo(scale) + FILL_ITERATIONS)
    window = axes[2]
    if req.samples > 1 and method.deterministic:
        log.warning("%s at detail 0 is deterministic: its %d samples are the same and the uncertainty is 0 "
                    "(raise the detail to sample)", req.method, req.samples)
    norms = raster.band_norms(whole, info)  # from the whole raster, also when only a window is processed
    src = raster.clipped(whole, window) if window else whole
    run = functools.partial(runner, window=window) if runner else run_tiles
    try:
        return run(req, src, raster.describe(src, bands) if window else info, norms, method, scale, axes[:2],
                   start, progress, is_cancelled)
    finally:
        if window:
            raster.release_clip(src)


def make_method(req: Request):
    """The SR method ``req`` asks for, ready to run."""
    method = build_method(req.method, MethodOptions(req.steps, req.backend, req.device, req.model, detail=req.detail,
                                                    precision=req.precision))
    return Projected(method) if req.consistency else method


def run_tiles(req: Request, src, info: raster.RasterInfo, norms: list[raster.BandNorm], method, scale: float,
              axes: tuple[Axis, Axis], start: float, progress: Callable[[float], None],
              is_cancelled: Callable[[], bool]) -> Result:
    """Stream the tiles of ``src`` through ``method`` into the output GeoTIFF on the grid ``axes`` (x, y)."""
    plan = tile_plan(info, scale, axes, req.tile, req.overlap, method.halo(scale))
    log.info("%s ×%.4g: %d×%d -> %d×%d, %d tiles", method.name, scale, info.width, info.height, plan.out_w, plan.out_h,
             plan.tiles)
    check_pending_memory(plan.rows, plan.out_w, len(info.bands), 2 if req.uncertainty else 1)
    outputs = open_outputs(req, src, info, plan)

    def fill() -> None:
        render(req, src, info, norms, method, plan, outputs, range(len(plan.rows)), lambda f: progress(0.95 * f),
               is_cancelled)
        if is_cancelled():
            raise Cancelled()

    commit_outputs(outputs, fill)
    progress(1.0)
    seconds = time.perf_counter() - start
    return Result(req.output, plan.out_w, plan.out_h, scale, method.name, plan.tiles, seconds)


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

    def first_row(self, cell_row: int) -> int:
        """The first tile row that reaches cell row ``cell_row``: the blend of that row needs every
        tile row from there on, in order."""
        top = self.rows[cell_row].out_start
        return next(i for i, t in enumerate(self.rows) if t.out_stop > top)


def tile_plan(info: raster.RasterInfo, scale: float, axes: tuple[Axis, Axis], tile: int, overlap: int,
              context: int) -> TilePlan:
    """The tiles of ``tile`` input pixels overlapping by ``overlap``, each read with ``context`` pixels
    (a method's halo) and the nodata fill's around the part it is trusted on: the overlap gives
    up to half of it (engine.tiling.required_margin), a wider read the rest, so a method sees as much
    in a tile as in a whole run whatever the overlap."""
    margin = required_margin(context + FILL_ITERATIONS, overlap)
    extra = math.ceil(context + FILL_ITERATIONS - margin)
    return TilePlan(scale, tuple(axes), axis_plan(info.height, axes[1], tile, overlap, margin, halo=extra),
                    axis_plan(info.width, axes[0], tile, overlap, margin, halo=extra))


def open_outputs(req: Request, src, info: raster.RasterInfo, plan: TilePlan, virtual: bool = False) -> list:
    """The output (and the uncertainty output, if asked) as raster.OutputRaster; ``virtual`` ones
    are assembled from shards instead of written window by window."""
    n_bands = len(info.bands)
    outputs = [raster.OutputRaster(req.output, src, info, plan.out_w, plan.out_h, cog=req.cog, axes=plan.axes,
                                   virtual=virtual)]
    try:
        if req.uncertainty:
            outputs.append(raster.OutputRaster(req.uncertainty, src, info, plan.out_w, plan.out_h, dtype=raster.FLOAT32,
                                               nodata=[math.nan] * n_bands, cog=req.cog, axes=plan.axes,
                                               virtual=virtual))
    except BaseException:
        outputs[0].discard()
        raise
    return outputs


def commit_outputs(outputs: list, fill: Callable[[], None]) -> None:
    """``fill()`` the outputs, then put them all in place together, the main one last
    (raster.commit_together). On any failure or cancel every output is discarded, and each final
    name keeps the file it held before the run."""
    try:
        fill()
    except BaseException:
        for out in outputs:
            out.discard()
        raise
    raster.commit_together(list(reversed(outputs)))


def render(req: Request, src, info: raster.RasterInfo, norms: list[raster.BandNorm], method, plan: TilePlan,
           writers: list, cells: range, progress: Callable[[float], None], is_cancelled: Callable[[], bool]) -> int:
    """Blend the tiles that reach the output cell rows ``cells`` and write those rows' cells, each
    once it is final, to ``writers`` (the output, then the uncertainty, each with
    ``write(data, x, y, valid)`` and ``flush()``). The tiles are added in the same order whatever
    ``cells`` is, so a band of rows gets the same bytes as a whole run. ``progress`` gets the
    fraction of this call's tiles done, ``is_cancelled`` is asked before every tile. Returns the
    number of tiles run."""
    (ax, ay), rows, cols, row_edges, col_edges = plan.axes, plan.rows, plan.cols, plan.row_edges, plan.col_edges
    fill = np.array([n.fill for n in norms], dtype=np.float32)
    n_bands = len(info.bands)
    seeds = sample_seeds(req.seed, req.samples)
    pending: dict[tuple[int, int], tuple[list[np.ndarray], np.ndarray]] = {}
    first = plan.first_row(cells.start)
    total = (cells.stop - first) * len(cols)
    for iy in range(first, cells.stop):
        ty = rows[iy]
        for ix, tx in enumerate(cols):
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
                in_h=ay.whole or info.height, in_w=ax.whole or info.width)
            k = (iy - first) * len(cols) + ix

            def within(fraction: float, k: int = k) -> None:  # inside the tile: between two network calls
                if is_cancelled():
                    raise Cancelled()
                progress((k + fraction) / total)

            layers = sample_layers(method, x, grid, seeds, n_bands, bool(req.uncertainty), within)
            weight = ty.weights[:, None] * tx.weights[None, :]
            out_valid = valid[:, nearest_indices(grid.ys, valid.shape[1])][:, :, nearest_indices(grid.xs, valid.shape[2])]
            scatter(pending, [layer * weight for layer in layers], out_valid, ty.out_start, tx.out_start, iy, ix,
                    row_edges, col_edges)
            (acc, *extra), ok = pending.pop((iy, ix))  # final now; a context row's cell is only dropped
            if iy >= cells.start:
                writers[0].write(to_storage(acc, norms, info.dtype, info.nodata, ok), col_edges[ix], row_edges[iy], ok)
                if extra:
                    std = np.stack([extra[0][c] * norms[c].scale for c in range(n_bands)]).astype(np.float32)
                    writers[1].write(np.where(ok, std, np.float32(np.nan)), col_edges[ix], row_edges[iy], ok)
            progress(((iy - first) * len(cols) + ix + 1) / total)
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
            row_edges: list[int], col_edges: list[int]) -> None:
    """Add the weighted layers of a tile into the output cells they overlap. Cell (i, j) spans rows
    row_edges[i]:row_edges[i+1] and columns col_edges[j]:col_edges[j+1]; only tiles (≤ i, ≤ j)
    reach it, so it is final once tile (i, j) is added."""
    n_bands, h, w = layers[0].shape
    cy = iy
    while cy < len(row_edges) - 1 and row_edges[cy] < y0 + h:
        cx = ix
        while cx < len(col_edges) - 1 and col_edges[cx] < x0 + w:
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
