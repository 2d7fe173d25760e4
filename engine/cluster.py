"""Run the tiles of a super-resolution on a Dask distributed cluster, with the bytes of a single run.

The output is cut into bands of whole rows of output cells along the single run's tile plan
(engine.pipeline.TilePlan). Each band is one task: a worker opens the input itself (a path or
GDAL URL that every worker can read), runs the tile rows that reach the band, from the first
one whose blend weights touch its top row, through engine.pipeline.render (the single run's own
loop, so every cell sums the same tiles in the same order), and writes the band's rows into a
shard GeoTIFF under a scratch name next to the output. The client then assembles the shards as a
VRT and packs that exactly as a single run packs its scratch file (engine.raster.OutputRaster).

Progress comes back as Dask events, one per tile. Cancel, a failing task or Ctrl-C sets a Dask
Event that the running tasks check before every tile, waits for them to stop, cancels the
futures and removes every shard and scratch file. A killed worker's task is rerun by Dask on
another worker and gives the same bytes, since a band is a pure function of the request.

``distributed`` is imported only here, and only when a cluster is asked for.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import signal
import sys
import sysconfig
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from osgeo import gdal

from . import pipeline, raster
from .allocator import fix_mmap_threshold
from .errors import Cancelled, LatentSRError
from .pipeline import (Request, Result, TilePlan, check_pending_memory, commit_outputs, make_method, open_outputs,
                       render, tile_plan)

log = logging.getLogger(__name__)

DASK_REQUIREMENT = "dask[distributed]==2026.8.0"
MAX_LOCAL_WORKERS = 256
MAX_BAND_ROWS = 64  # tile rows per band at most
POLL_SECONDS = 0.2
STOP_SECONDS = 120.0  # how long a cancel waits for running tasks to reach their next tile
ADDRESS = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^\s:/]+(:\d+)?$", re.IGNORECASE)


def parse_address(text: str) -> tuple[str, int | None]:
    """("local", N) for ``local:N``, else (scheduler address, None); a LatentSRError if malformed."""
    text = text.strip()
    if text.lower().startswith("local"):
        match = re.fullmatch(r"local:(\d+)", text, re.IGNORECASE)
        if not match or not 1 <= int(match.group(1)) <= MAX_LOCAL_WORKERS:
            raise LatentSRError(f"cluster '{text}': write local:N with 1 <= N <= {MAX_LOCAL_WORKERS} worker processes")
        return "local", int(match.group(1))
    if not ADDRESS.match(text):
        raise LatentSRError(f"cluster '{text}' is neither a Dask scheduler address (tcp://host:8786) nor local:N")
    return text, None


def band_rows(n_rows: int, workers: int) -> int:
    """Tile rows per band. Every band but the first also runs the tile row above it (its blend
    needs it), so a band of k rows costs k + 1, and with w workers a run takes about
    ceil(ceil(n_rows / k) / w) · (k + 1) row times: the k that minimises that (ties: the larger k,
    less work in all), at most MAX_BAND_ROWS (what a lost worker costs, and a shard's size)."""
    workers = max(1, workers)
    best, best_cost = 1, math.inf
    for k in range(1, max(1, min(n_rows, MAX_BAND_ROWS)) + 1):
        cost = math.ceil(math.ceil(n_rows / k) / workers) * (k + 1)
        if cost <= best_cost:
            best, best_cost = k, cost
    return best


def bands(n_rows: int, rows_per_band: int) -> list[range]:
    """The cell rows of each band, top to bottom."""
    return [range(a, min(a + rows_per_band, n_rows)) for a in range(0, n_rows, rows_per_band)]


@dataclass(frozen=True)
class Job:
    """What every band task of one run shares (sent to the workers)."""

    request: Request  # with absolute paths
    window: tuple[int, int, int, int] | None  # the pixel window of the input that is processed
    norms: list  # the client's raster.BandNorm of the whole input
    scale: float
    axes: tuple  # (x, y) engine.grid.Axis: the output grid
    name: str  # of the cancel Event and the progress topic


@dataclass(frozen=True)
class Band:
    index: int
    start: int  # cell rows start:stop
    stop: int
    shards: tuple[str, ...]  # one per output (the output, then the uncertainty)


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise LatentSRError(f"--cluster needs Dask distributed, which is not installed: "
                            f"pip install '{DASK_REQUIREMENT}'") from None
    return distributed


@contextlib.contextmanager
def connect(address: str):
    """A distributed.Client on ``address`` (local:N starts N worker processes on 127.0.0.1 with one
    task thread each and an equal share of the cores for their numerical libraries) and its worker
    count; everything started here is closed on exit."""
    distributed = import_distributed()
    import dask

    verbose = log.isEnabledFor(logging.DEBUG)
    logging.getLogger("distributed").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    target, n = parse_address(address)
    with contextlib.ExitStack() as stack:
        if target == "local":
            use_python_for_workers()
            stack.enter_context(kept_environment(dask.config.get("distributed.nanny.pre-spawn-environ", {})))
            threads = str(max(1, (os.cpu_count() or 1) // n))
            try:
                with warnings.catch_warnings(), sigint_ignored():  # "port 8787 is in use": another one is taken
                    warnings.simplefilter("ignore")
                    cluster = stack.enter_context(distributed.LocalCluster(
                        n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                        silence_logs=logging.WARNING if verbose else logging.CRITICAL,
                        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}))
            except Exception as exc:  # noqa: BLE001 - whatever stops the processes from starting, in one line
                raise LatentSRError(f"cannot start a local Dask cluster of {n} workers: {raster.one_line(exc)}") from None
            target = cluster.scheduler_address
        try:
            client = stack.enter_context(distributed.Client(target, set_as_default=False))
        except (OSError, TimeoutError) as exc:
            raise LatentSRError(f"cannot reach the Dask scheduler at {address}: {raster.one_line(exc)}") from None
        try:
            client.wait_for_workers(1, timeout=dask.utils.parse_timedelta(
                dask.config.get("distributed.comm.timeouts.connect")))
        except (OSError, TimeoutError):
            raise LatentSRError(f"the Dask scheduler at {address} has no workers") from None
        yield client, max(1, sum(client.nthreads().values()))


def use_python_for_workers() -> None:
    """Local workers are started with multiprocessing's spawn, which runs sys.executable: inside QGIS
    (qgis, qgis_process) that is QGIS itself, so point it at the Python that QGIS embeds."""
    import multiprocessing

    if os.path.basename(sys.executable).lower().startswith("python"):
        return
    version = "{}.{}".format(*sys.version_info[:2])
    bindir = sysconfig.get_config_var("BINDIR") or ""  # where this Python's own build put its interpreter
    for candidate in (os.path.join(bindir, "python" + version), os.path.join(sys.exec_prefix, "python.exe"),
                      os.path.join(sys.exec_prefix, "bin", "python" + version)):
        if candidate and os.path.isfile(candidate):
            multiprocessing.set_executable(candidate)
            return
    raise LatentSRError("cannot find the Python interpreter to start local Dask workers: give a scheduler address")


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored while local workers are spawned, so that they inherit that: a Ctrl-C in the
    terminal then reaches the client only, which stops the bands and cleans up (a worker killed by it
    would leave its band to wait for a restart). Only the main thread can change signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def kept_environment(names):
    """Undo on exit what the Dask nanny sets in this process's environment for its workers."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def superresolve(req: Request, progress: Callable[[float], None] | None = None,
                  is_cancelled: Callable[[], bool] | None = None) -> Result:
    """engine.pipeline.superresolve, with the tiles on the cluster ``req.cluster`` when it is set."""
    if req.cluster:
        parse_address(req.cluster)  # a malformed address fails before anything is opened
        return pipeline.superresolve(req, progress, is_cancelled, runner=run_tiles)
    return pipeline.superresolve(req, progress, is_cancelled)


def run_tiles(req: Request, src, info: raster.RasterInfo, norms: list, method, scale: float, axes: tuple,
              start: float, progress: Callable[[float], None], is_cancelled: Callable[[], bool],
              window: tuple[int, int, int, int] | None = None) -> Result:
    """engine.pipeline.run_tiles on the cluster ``req.cluster``: the same output, band by band."""
    plan = tile_plan(info, scale, axes, req.tile, req.overlap, method.halo(scale))
    check_pending_memory(plan.rows, plan.out_w, len(info.bands), 2 if req.uncertainty else 1)  # as on each worker
    with connect(req.cluster) as (client, workers):
        cells = bands(len(plan.rows), band_rows(len(plan.rows), workers))
        log.info("%s ×%.4g on %s (%d worker threads): %d×%d -> %d×%d, %d tiles in %d bands", method.name, scale,
                 req.cluster, workers, info.width, info.height, plan.out_w, plan.out_h,
                 plan.tiles, len(cells))
        outputs = open_outputs(req, src, info, plan, virtual=True)
        job = Job(absolute(req), window, norms, scale, plan.axes, f"latentsr-{uuid.uuid4().hex}")
        work = [Band(i, c.start, c.stop, tuple(out.shard_path(i) for out in outputs)) for i, c in enumerate(cells)]

        def fill() -> None:
            run_bands(client, job, plan, work, lambda f: progress(0.95 * f), is_cancelled)
            for band in work:
                y0, y1 = plan.row_edges[band.start], plan.row_edges[band.stop]
                for out, shard in zip(outputs, band.shards):
                    out.add_shard(shard, y0, y1 - y0)

        commit_outputs(outputs, fill)
    progress(1.0)
    return Result(req.output, plan.out_w, plan.out_h, scale, method.name, plan.tiles, time.perf_counter() - start)


def absolute(req: Request) -> Request:
    """``req`` with its local paths absolute, as workers in other folders need them."""
    def local(path):
        return os.path.abspath(path) if path and os.path.exists(path) else path
    return dataclasses.replace(req, input=local(req.input), model=local(req.model))


def run_bands(client, job: Job, plan: TilePlan, work: list[Band], progress: Callable[[float], None],
              is_cancelled: Callable[[], bool]) -> None:
    """Run every band on the cluster; return when all shards are in place. On failure or cancel the
    running tasks are stopped and the futures cancelled before this raises."""
    distributed = import_distributed()
    tiles = [(plan.first_row(b.start), b.stop) for b in work]
    total = sum((stop - first) * len(plan.cols) for first, stop in tiles)
    done = [0.0] * len(work)  # the fraction of each band's tiles done

    def on_event(event) -> None:
        index, fraction = event[1]
        done[index] = max(done[index], fraction)

    client.subscribe_topic(job.name, on_event)
    stop = distributed.Event(job.name, client=client)
    futures = [client.submit(run_band, job, band, key=f"latentsr-band-{band.index:05d}-{job.name[9:17]}", pure=False)
               for band in work]
    try:
        while True:
            time.sleep(POLL_SECONDS)
            for future in futures:
                if future.status == "error":
                    raise band_error(future.exception())
                if future.status == "cancelled":
                    raise LatentSRError("the cluster cancelled a task of this run")
            finished = [f.status == "finished" for f in futures]
            for i, ok in enumerate(finished):
                if ok:
                    done[i] = 1.0
            progress(sum(d * (stop - first) * len(plan.cols) for d, (first, stop) in zip(done, tiles)) / total)
            if all(finished):
                break
            if is_cancelled():
                raise Cancelled()
        if not all(f.result() for f in futures):
            raise Cancelled()
    except BaseException:
        stop.set()
        deadline = time.monotonic() + STOP_SECONDS
        while any(f.status == "pending" for f in futures) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)  # each running task stops at its next tile, the others at once
        client.cancel(futures)
        raise
    finally:
        client.unsubscribe_topic(job.name)


def band_error(exc: BaseException | None) -> LatentSRError:
    if isinstance(exc, LatentSRError):
        return LatentSRError(str(exc))
    if "deserializ" in str(exc):
        return LatentSRError(f"the Dask workers cannot load LatentSR's engine ({module_root()}): start them with "
                             f"{module_home()} on PYTHONPATH")
    return LatentSRError(f"a band failed on the cluster: {type(exc).__name__}: {raster.one_line(exc)}")


def module_root() -> str:
    """The package name the workers must import the engine under (engine, or latentsr.engine in QGIS)."""
    return __name__.rsplit(".", 1)[0]


def module_home() -> str:
    """The folder that must be on a worker's PYTHONPATH for module_root() to import."""
    home = os.path.dirname(os.path.abspath(__file__))
    for _ in module_root().split("."):
        home = os.path.dirname(home)
    return home


def run_band(job: Job, band: Band) -> bool:
    """A worker's task: the band's rows of every output into its shards. False if the run was
    cancelled before the band was done (nothing of it is left then)."""
    from distributed import Event, get_worker

    stop = Event(job.name)
    if stop.is_set():
        return False
    worker = get_worker()
    req = job.request
    src, plan, shards = None, None, []
    gdal.PushErrorHandler(gdal_to_log)  # GDAL's own messages must not reach the worker's stderr
    fix_mmap_threshold()  # as the CLI does for its process: the networks' tensors must not pile up in the heap
    try:
        src, info = open_input(req, job.window)
        method = worker_method(req)
        plan = tile_plan(info, job.scale, job.axes, req.tile, req.overlap, method.halo(job.scale))
        y0, y1 = plan.row_edges[band.start], plan.row_edges[band.stop]
        kinds = [(info.gdal_type, info.signed_byte), (raster.FLOAT32, False)][:len(band.shards)]
        for path, (dtype, signed) in zip(band.shards, kinds):
            shards.append(Shard(path, plan.out_w, y1 - y0, len(info.bands), dtype, y0, info.masked, signed))
        render(req, src, info, job.norms, method, plan, shards, range(band.start, band.stop),
               lambda f: worker.log_event(job.name, [band.index, f]), stop.is_set)
        for shard in shards:
            shard.finish()
        return True
    except Cancelled:
        return False
    except Exception as exc:  # noqa: BLE001 - the client shows it as one line that names the window
        raise LatentSRError(f"{window_text(plan, band, job.window)}: {raster.one_line(exc)}") from None
    finally:
        for shard in shards:
            shard.discard()
        if src is not None and job.window:
            raster.release_clip(src)
        gdal.PopErrorHandler()


def gdal_to_log(err_class: int, err_no: int, message: str) -> None:
    logging.getLogger("gdal").debug("GDAL error class %d, number %d: %s", err_class, err_no, message.strip())


def window_text(plan: TilePlan | None, band: Band, window) -> str:
    """The band's place, in output rows and in input rows."""
    if plan is None:
        return f"band {band.index + 1} (tile rows {band.start}-{band.stop - 1})"
    first = plan.first_row(band.start)
    in_y0, in_y1 = plan.rows[first].in_start, plan.rows[band.stop - 1].in_stop
    if window:
        in_y0, in_y1 = in_y0 + window[1], in_y1 + window[1]
    return (f"output rows {plan.row_edges[band.start]}-{plan.row_edges[band.stop] - 1} "
            f"(input rows {in_y0}-{in_y1 - 1}) failed")


def open_input(req: Request, window):
    """The input as the client saw it: the dataset (clipped to ``window``) and its description."""
    bands = list(req.bands) if req.bands else None
    whole = raster.open_raster(req.input)
    if not window:
        return whole, raster.describe(whole, bands)
    src = raster.clipped(whole, window)
    return src, raster.describe(src, bands)


_methods = threading.local()


def worker_method(req: Request):
    """The request's method, built once per worker thread for the fields that decide it (the last
    one only: one model in memory)."""
    key = (req.method, req.steps, req.backend, req.device, req.model, req.consistency)
    if getattr(_methods, "key", None) != key:
        _methods.key, _methods.method = None, None
        _methods.method, _methods.key = make_method(req), key
    return _methods.method


class Shard:
    """The rows y0.. of one output (its mask too, if ``masked``), written into a GeoTIFF under a scratch
    name of its own and renamed to ``path`` by ``finish``: a rerun of the same band (after a lost
    worker) never sees a half file."""

    def __init__(self, path: str, width: int, height: int, bands: int, dtype: int, y0: int, masked: bool = False,
                 signed: bool = False):
        self.path, self.y0, self.masked = path, y0, masked
        self.scratch = f"{path}.{uuid.uuid4().hex[:8]}.part"
        options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "BIGTIFF=IF_NEEDED", "INTERLEAVE=BAND"]
        if signed:
            options.append("PIXELTYPE=SIGNEDBYTE")
        try:
            with raster.internal_masks():
                self.ds = gdal.GetDriverByName("GTiff").Create(self.scratch, width, height, bands, dtype, options)
                if masked:
                    self.ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        except RuntimeError as exc:
            raise LatentSRError(f"cannot create a shard next to the output: {raster.one_line(exc)}") from None

    def write(self, data: np.ndarray, x0: int, y0: int, valid: np.ndarray | None = None) -> None:
        def write_bands():
            for i in range(data.shape[0]):
                self.ds.GetRasterBand(i + 1).WriteArray(data[i], x0, y0 - self.y0)
            if self.masked and valid is not None:  # as engine.raster.OutputRaster.write
                mask = self.ds.GetRasterBand(1).GetMaskBand()
                mask.WriteArray(np.where(valid.any(axis=0), 255, 0).astype(np.uint8), x0, y0 - self.y0)
        raster.OutputRaster._writing(write_bands)

    def flush(self) -> None:
        raster.OutputRaster._writing(lambda: self.ds.FlushCache())

    def finish(self) -> None:
        raster.OutputRaster._writing(lambda: self.ds.FlushCache())
        self.ds = None
        os.replace(self.scratch, self.path)

    def discard(self) -> None:
        with raster.quiet_gdal():
            self.ds = None
        if os.path.exists(self.scratch):
            os.remove(self.scratch)
