"""The entry point of a super-resolution: ``superresolve(req)``, for the CLI, the Processing
algorithm (which the dock runs) and evaluate alike.

A run is asked for with one frozen ``Request``: where to read and write, the output grid, the
tiling, and its run options (engine.methods.RunOptions: the method's options and its sampling's,
stated once there, and an evaluation's request holds the same). The front ends build a request once
and pass it whole; what is derived from it is derived from its options: the method
(``RunOptions.make_method``), the key under which a Dask worker keeps a method it built
(``RunOptions.method_key``) and the words that name a result (``RunOptions.label``).

The pipeline checks the request, opens the input, works out the output grid, builds the method,
plans the tiles, and hands them to an executor below it: engine.render.run_here in this process,
or engine.cluster's on a Dask cluster (``req.cluster``). Both write the same bytes.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from . import cluster, guard, raster
from .errors import LatentSRError
from .grid import Axis, resolution_axis, scale_axis, snap_window
from .methods import DEFAULTS, RunOptions
from .render import FILL_ITERATIONS, TileJob, check_pending_memory, run_here
from .tiling import tile_plan

log = logging.getLogger(__name__)

MAX_SCALE = 8.0
MIN_TILE = 16


@dataclass(frozen=True)
class Request:
    """Everything a run needs: the same fields as the CLI flags and the Processing parameters."""

    input: str
    output: str
    options: RunOptions = RunOptions()
    scale: float | None = None
    target_resolution: float | None = None
    bands: Sequence[int] | None = None
    tile: int = DEFAULTS.tile
    overlap: int = DEFAULTS.overlap
    uncertainty: str | None = None
    cog: bool = False
    extent: tuple[float, float, float, float] | None = None  # (xmin, ymin, xmax, ymax) in the input's CRS
    cluster: str | None = None  # a Dask scheduler address or local:N: the tiles run there (engine.cluster)

    def check(self) -> None:
        """Validate what can be validated without opening the input (the options are valid already)."""
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
        if self.uncertainty and self.options.samples < 2:
            raise LatentSRError("an uncertainty output needs at least 2 samples")
        if self.cluster:
            cluster.parse_address(self.cluster)  # a malformed address fails before anything is opened


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
                 is_cancelled: Callable[[], bool] | None = None) -> Result:
    """Run ``req``. ``progress`` gets a fraction in [0, 1]; ``is_cancelled`` is asked before every
    tile. On any failure or cancel no output file is left behind."""
    start = time.perf_counter()
    progress = progress or (lambda f: None)
    is_cancelled = is_cancelled or (lambda: False)
    req.check()
    bands = list(req.bands) if req.bands else None
    whole = raster.open_raster(req.input)
    # the outputs' checks together (engine.guard), before anything is written
    guard.check_tif_name(req.output, "output", vrt=bool(req.cluster))
    guard.check_tif_name(req.uncertainty, "uncertainty output", vrt=bool(req.cluster))
    guard.check_outputs({"output": req.output, "uncertainty output": req.uncertainty}, {"input": (req.input, whole)})
    info = raster.describe(whole, bands)
    window = raster.extent_window(info, req.extent) if req.extent else None
    norms = raster.band_norms(whole, info)  # from the whole raster, also when only a window is processed
    method = req.options.make_method()
    if req.options.samples > 1 and method.deterministic:
        log.warning("%s at detail 0 is deterministic: its %d samples are the same and the uncertainty is 0 "
                    "(raise the detail to sample)", req.options.method, req.options.samples)
    scale = req.scale if req.target_resolution is None else scale_for_resolution(info.geotransform, req.target_resolution)
    # a window is read with the context the method has in a whole run, so that it gives the same pixels
    ax, ay, window = output_axes(info.width, info.height, info.geotransform, scale, req.target_resolution, window,
                                 halo=method.halo(scale) + FILL_ITERATIONS)
    with raster.window_part(whole, window, bands, info) as (src, part):
        plan = tile_plan(part.width, part.height, scale, (ax, ay), req.tile, req.overlap,
                         method.halo(scale) + FILL_ITERATIONS)
        log.info("%s ×%.4g: %d×%d -> %d×%d, %d tiles", method.name, scale, part.width, part.height, plan.out_w,
                 plan.out_h, plan.tiles)
        check_pending_memory(plan.rows, plan.out_w, len(part.bands), 2 if req.uncertainty else 1)
        execute = cluster.run_tiles if req.cluster else run_here  # the executor that runs the tiles
        execute(TileJob(req, src, part, norms, method, plan, window), lambda f: progress(0.95 * f), is_cancelled)
    progress(1.0)
    return Result(req.output, plan.out_w, plan.out_h, scale, method.name, plan.tiles, time.perf_counter() - start)
