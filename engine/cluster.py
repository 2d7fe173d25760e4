"""An executor of engine.pipeline: the tiles of a super-resolution on a Dask distributed cluster,
with the bytes of a single run. The pipeline hands it the run's tiles (engine.render.TileJob) when
the request names a cluster (``run_tiles``).

The output is cut into blocks of k rows by m columns of output cells along the single run's tile
plan (engine.tiling.TilePlan; block_shape chooses k and m for the grid and the workers). Each
block is one task: a worker opens the input itself (a path or GDAL URL that every worker can
read), runs the tiles that reach the block (engine.tiling.TilePlan.reach: its own, and those of
the row above it and the column to its left whose blend weights touch it) through
engine.render.render (the single run's own loop, so every cell sums the same tiles in the same
order), and writes the block's cells into a shard GeoTIFF under a scratch name next to the
output. The client then assembles the shards as a VRT mosaic and packs that exactly as a single
run packs its scratch file (engine.output.OutputRaster); for an output named .vrt, the shards
are written tiled and compressed, as the output's own files, and the client writes only the VRT:
no step on the client grows with the output's pixels.

Progress comes back as Dask events, one per tile. Cancel, a failing task or Ctrl-C sets a Dask
Event that the running tasks check before every tile, waits for them to stop, cancels the
futures and removes every shard and scratch file. A killed worker's task is rerun by Dask on
another worker and gives the same bytes, since a block is a pure function of the request. The
run's event topic and Event are removed from the scheduler when it ends.

The client sends the engine itself: a zip of its package, installed on the scheduler and every
worker through Dask plugins (ship_engine, engine.shipping), so stock `dask scheduler` and `dask
worker` processes with the engine's dependencies run it. It decides everything a worker could
decide otherwise: the model folder (resolved here, LATENTSR_MODEL included, sent as an absolute
path and checked on the worker against the client's model card), and the engine's version (a
fingerprint of its source, which a worker must share). A worker keeps the
last method it built, under the key of the request's options (engine.methods.RunOptions.method_key:
every option that builds the method) and the model folder's fingerprint (method_key, model_fingerprint).

``distributed`` is imported only here, and only when a cluster is asked for.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import importlib.resources
import io
import ipaddress
import logging
import math
import os
import re
import signal
import socket
import threading
import time
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
from osgeo import gdal

from . import modelfile, output, raster
from .allocator import fix_mmap_threshold
from .errors import Cancelled, LatentSRError
from .methods import choose_backend, run_precision
from .registry import LEARNED
from .render import FILL_ITERATIONS, TileJob, commit_outputs, open_outputs, render
from .tiling import Cells, TilePlan, tile_plan

log = logging.getLogger(__name__)

DASK_REQUIREMENT = "dask[distributed]==2026.8.0"
MAX_LOCAL_WORKERS = 256
MAX_BLOCK_TILES = 64 * 64  # cells per block at most
POLL_SECONDS = 0.2
STOP_SECONDS = 120.0  # how long a cancel waits for running tasks to reach their next tile
ADDRESS = re.compile(r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[^\]\s]*\]|[^\s:/\[\]]*)"
                     r"(?::(?P<port>[^:]*))?", re.IGNORECASE)
SCHEMES = ("tcp", "tls", "ws", "wss")  # Dask's protocols over TCP (reach() opens a TCP connection first)


def parse_address(text: str) -> tuple[str, int | None]:
    """("local", N) for ``local:N``, else (scheduler address, None): [protocol://]host:port, with an
    IPv6 host in brackets (tcp://[::1]:8786); a LatentSRError if malformed."""
    text = text.strip()
    if text.lower().startswith("local"):
        match = re.fullmatch(r"local:(\d+)", text, re.IGNORECASE)
        if not match or not 1 <= int(match.group(1)) <= MAX_LOCAL_WORKERS:
            raise LatentSRError(f"cluster '{text}': write local:N with 1 <= N <= {MAX_LOCAL_WORKERS} worker processes")
        return "local", int(match.group(1))
    address_parts(text)  # refuses what cannot be a scheduler's address
    return text, None


def address_parts(text: str) -> tuple[str, str, int]:
    """(protocol, host, port) of a scheduler address (the host without IPv6 brackets)."""
    usage = "neither a Dask scheduler address (tcp://host:8786, an IPv6 host in brackets: tcp://[::1]:8786) nor local:N"
    match = ADDRESS.fullmatch(text)
    if not match or not match.group("host"):
        raise LatentSRError(f"cluster '{text}' is {usage}")
    scheme, host, port = (match.group("scheme") or "tcp").lower(), match.group("host"), match.group("port")
    if scheme == "inproc":
        raise LatentSRError(f"cluster '{text}' is a Dask in-process address, which this run cannot reach: "
                            f"give a scheduler's tcp://host:port or local:N")
    if scheme not in SCHEMES:
        raise LatentSRError(f"cluster '{text}': unknown protocol '{scheme}://' (Dask schedulers listen on "
                            f"{', '.join(s + '://' for s in SCHEMES)})")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise LatentSRError(f"cluster '{text}': '{host}' is not an IPv6 address") from None
        host = host[1:-1]
    if port is None:
        raise LatentSRError(f"cluster '{text}' has no port: write {scheme}://{match.group('host')}:8786 "
                            f"(8786 is the Dask scheduler's default)")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise LatentSRError(f"cluster '{text}': the port must be a number from 1 to 65535, got '{port}'")
    return scheme, host, int(port)


def block_shape(n_rows: int, n_cols: int, workers: int) -> tuple[int, int]:
    """(k, m): cell rows and columns per block of an output of n_rows × n_cols cells. A block also
    runs the tiles of the cell row above it and of the column to its left (its blend needs them),
    so where the output has more than one block down and across, a block of k × m cells costs
    (k + 1)(m + 1) tile times; with w worker threads its N = ceil(n_rows / k) · ceil(n_cols / m)
    blocks run in ceil(N / w) waves. The shape that minimises waves · cost (ties: fewer blocks,
    less work in all; then the wider), of at most MAX_BLOCK_TILES cells (what a lost worker
    costs, and a shard's size)."""
    workers = max(1, workers)
    best, best_key = (1, 1), None
    for k in least_sizes(n_rows):
        down = math.ceil(n_rows / k)
        for m in least_sizes(n_cols):
            if k * m > MAX_BLOCK_TILES:
                break
            across = math.ceil(n_cols / m)
            key = (math.ceil(down * across / workers) * block_tiles(n_rows, n_cols, k, m), down * across, -m)
            if best_key is None or key < best_key:
                best, best_key = (k, m), key
    return best


def block_tiles(n_rows: int, n_cols: int, k: int, m: int) -> int:
    """The tiles a block of k × m cells of an n_rows × n_cols grid runs: its own, and the row above
    it and the column to its left where the grid has more than one block down and across (one
    tile each with the engine's tile and overlap)."""
    return (k + (math.ceil(n_rows / k) > 1)) * (m + (math.ceil(n_cols / m) > 1))


def least_sizes(n: int) -> list[int]:
    """For each number of blocks along an axis of n cells, the least size of block that gives it."""
    return sorted({math.ceil(n / count) for count in range(1, max(1, n) + 1)})


def blocks(n_rows: int, n_cols: int, k: int, m: int) -> list[Cells]:
    """The cells of each block of k × m cells, row by row of blocks, each left to right."""
    return [Cells(range(a, min(a + k, n_rows)), range(b, min(b + m, n_cols)))
            for a in range(0, n_rows, k) for b in range(0, n_cols, m)]


@dataclass(frozen=True)
class Job:
    """What every block task of one run shares (sent to the workers)."""

    request: object  # the engine.pipeline.Request, with absolute paths and the client's model (for_workers)
    window: tuple[int, int, int, int] | None  # the pixel window of the input that is processed
    norms: list  # the client's raster.BandNorm of the whole input
    scale: float
    axes: tuple  # (x, y) engine.grid.Axis: the output grid
    name: str  # of the cancel Event and the progress topic
    engine: str  # the client's engine_version()
    card: str | None  # the SHA-256 of the client's model card (None: the method has no model)
    final: tuple[bool, ...] = ()  # per output: its shards are its own files (a .vrt output), so written compressed


@dataclass(frozen=True)
class Block:
    index: int
    cells: Cells
    shards: tuple[str, ...]  # one per output (the output, then the uncertainty)


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise LatentSRError(f"--cluster needs Dask distributed, which is not installed: "
                            f"pip install '{DASK_REQUIREMENT}'") from None
    return distributed


def connect_timeout() -> float:
    """Dask's connect timeout in seconds (distributed.comm.timeouts.connect); importing distributed
    registers that configuration."""
    import_distributed()
    import dask
    import dask.utils

    return dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))


@contextlib.contextmanager
def connect(address: str):
    """A distributed.Client on ``address`` (local:N starts N worker processes on 127.0.0.1 with one
    task thread each and an equal share of the cores for their numerical libraries) and its worker
    count; everything started here is closed on exit. A scheduler address is first reached within
    Dask's connect timeout (distributed.comm.timeouts.connect), so that a wrong address, or another
    service on that port, fails in one line instead of waiting for an answer that never comes."""
    distributed = import_distributed()
    import dask

    quiet_dask()
    timeout = connect_timeout()
    target, n = parse_address(address)
    with contextlib.ExitStack() as stack:
        if target == "local":
            use_python_for_workers()
            stack.enter_context(kept_environment(dask.config.get("distributed.nanny.pre-spawn-environ", {})))
            threads = str(max(1, (os.cpu_count() or 1) // n))
            verbose = log.isEnabledFor(logging.DEBUG)
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
        else:
            reach(address, timeout)
        try:
            client = stack.enter_context(distributed.Client(target, timeout=timeout, set_as_default=False))
        except (OSError, TimeoutError) as exc:
            raise LatentSRError(f"cannot reach the Dask scheduler at {address}: {raster.one_line(exc)}") from None
        stack.callback(close_client, client)  # before the Client's own exit, which could wait on a lost scheduler
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError):
            raise LatentSRError(f"the Dask scheduler at {address} has no workers") from None
        yield client, max(1, sum(client.nthreads().values()))


def quiet_dask() -> None:
    """Dask's loggers (distributed.client and others carry levels of their own) log only with
    --verbose; otherwise what goes wrong reaches the user as one LatentSRError line."""
    level = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL
    for name in ["distributed", *logging.root.manager.loggerDict.copy()]:
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(level)


def reach(address: str, timeout: float) -> None:
    """Connect to the scheduler at ``address`` and exchange Dask's handshake, all within ``timeout``
    seconds, or raise a LatentSRError that says why not. Dask's own connect waits for the handshake
    without a limit (an HTTP server on the port never sends one), and reads a reply that is not
    Dask's as a frame length (a 3 EiB MemoryError): neither reaches the user. It runs on a thread of
    its own, so that it needs no event loop of the caller's."""
    from distributed.comm import connect as dask_connect
    from distributed.security import Security

    _, host, port = address_parts(address)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise LatentSRError(f"cannot reach the Dask scheduler at {address}: unknown host {host} "
                            f"({exc.strerror or exc})") from None
    try:  # a closed port fails here at once (Dask's connect would retry it for the whole timeout)
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise LatentSRError(f"cannot reach the Dask scheduler at {address}: {reason}") from None
    outcome: list[BaseException | None] = []

    async def handshake() -> None:
        security = Security().get_connection_args("client")  # as the Client will (TLS from Dask's configuration)
        comm = await asyncio.wait_for(dask_connect(address, timeout=timeout, **security), timeout)
        await comm.close()

    def attempt() -> None:
        try:
            asyncio.run(handshake())
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - judged below, on the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=attempt, name="latentsr-reach", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)  # the attempt ends by itself within timeout; this bound is for a stuck resolver
    exc = outcome[0] if outcome else TimeoutError()
    if exc is None:
        return
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        raise LatentSRError(f"cannot reach the Dask scheduler at {address}: no Dask handshake within {timeout:g} s: "
                            f"is it a Dask scheduler? (distributed.comm.timeouts.connect sets the wait)")
    raise LatentSRError(f"cannot reach the Dask scheduler at {address}: what answers there does not speak Dask's "
                        f"protocol ({type(exc).__name__})")


def close_client(client) -> None:
    """Close ``client`` without waiting long for a scheduler that is gone."""
    with contextlib.suppress(Exception):
        client.close(timeout=2)


def use_python_for_workers() -> None:
    """Local workers are started with multiprocessing's spawn, which runs sys.executable: inside QGIS
    that can be QGIS itself or another Python first on PATH, so point it at this process's own Python
    (engine.interpreter)."""
    import multiprocessing

    from .interpreter import python_executable

    python = python_executable()
    if python is None:
        raise LatentSRError("cannot find the Python interpreter to start local Dask workers: give a scheduler address")
    multiprocessing.set_executable(python)


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored while local workers are spawned, so that they inherit that: a Ctrl-C in the
    terminal then reaches the client only, which stops the blocks and cleans up (a worker killed by it
    would leave its block to wait for a restart). Only the main thread can change signal handlers."""
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


def run_tiles(tiles: TileJob, progress: Callable[[float], None], is_cancelled: Callable[[], bool]) -> None:
    """The executor of engine.pipeline for a request with a cluster: engine.render.run_here on the
    cluster ``tiles.request.cluster``, the same outputs, block by block."""
    req, plan = tiles.request, tiles.plan
    with connect(req.cluster) as (client, workers):
        k, m = block_shape(len(plan.rows), len(plan.cols), workers)
        cells = blocks(len(plan.rows), len(plan.cols), k, m)
        across = math.ceil(len(plan.cols) / m)
        log.info("on %s (%d worker threads): %d blocks of up to %d × %d tiles", req.cluster, workers, len(cells), k, m)
        ship_engine(client)
        outputs = open_outputs(req, tiles.src, tiles.info, plan, virtual=True)
        sent = for_workers(req)
        job = Job(sent, tiles.window, tiles.norms, plan.scale, plan.axes, f"latentsr-{uuid.uuid4().hex}",
                  engine_version(), card_sha256(sent), tuple(out.tiled_vrt for out in outputs))
        work = [Block(i, c, tuple(out.shard_path(i // across, i % across) for out in outputs))
                for i, c in enumerate(cells)]

        def fill() -> None:
            run_blocks(client, job, plan, work, progress, is_cancelled)
            for block in work:
                for out, shard in zip(outputs, block.shards):
                    out.add_shard(shard, *plan.window(block.cells))

        commit_outputs(outputs, fill)


def for_workers(req):
    """The request ``req`` (engine.pipeline.Request) as the workers must run it: its input path
    absolute (workers start in other folders), and for a learned method the model the client resolved
    (LATENTSR_MODEL included), as an absolute folder that the workers read like the input (its card is
    checked on each: card_sha256; the engine the client ships has no bundled models), the backend
    the client chose for backend auto (a worker that lacks it then refuses in one line instead of
    running another backend's floats), and the precision it chose for precision auto (engine.precision),
    so that every block runs the client's arithmetic."""
    def local(path):
        return os.path.abspath(path) if path and os.path.exists(path) else path
    options = req.options
    if options.method in LEARNED:
        folder = modelfile.resolve(options.model).absolute()
        backend = choose_backend(options.backend, options.device, modelfile.read_card(folder))
        chosen = run_precision(options.precision, backend, options.device)
        options = dataclasses.replace(options, model=str(folder), backend=backend, precision=chosen)
    return dataclasses.replace(req, input=local(req.input), options=options)


@functools.lru_cache(maxsize=1)
def engine_files() -> tuple[tuple[str, bytes], ...]:
    """(path inside the package, bytes) of each Python file of this engine, sorted by path: read
    from its folder, or from the zip a client shipped (ship_engine), once per process (what is
    shipped is what engine_version fingerprints)."""
    def walk(node, prefix: str):
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                yield from walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".py"):
                yield f"{prefix}{child.name}", child.read_bytes()
    return tuple(walk(importlib.resources.files(module_root()), ""))


@functools.lru_cache(maxsize=1)
def engine_version() -> str:
    """A fingerprint of this engine: the SHA-256 of its package's Python files (names and bytes). A
    worker whose engine differs from the client's refuses the run."""
    digest = hashlib.sha256()
    for name, data in engine_files():
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def engine_zip() -> bytes:
    """This engine's Python files as a zip that imports under module_root() (with an empty
    __init__.py for each package above it: latentsr.engine inside QGIS)."""
    root = module_root().split(".")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for depth in range(1, len(root)):
            archive.writestr(zipfile.ZipInfo("/".join(root[:depth]) + "/__init__.py", FIXED_TIME), b"")
        for name, data in engine_files():
            archive.writestr(zipfile.ZipInfo("/".join(root) + "/" + name, FIXED_TIME), data)
    return buffer.getvalue()


FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries' time: the same engine gives the same bytes


def ship_engine(client) -> None:
    """Install this engine on the cluster's scheduler and on every worker, those that join later too,
    through Dask (engine.shipping): stock ``dask scheduler`` and ``dask worker`` processes with the
    engine's dependencies (numpy, GDAL, onnxruntime or torch) need nothing else. Registered once per
    scheduler and engine version; a process that imports an engine of its own keeps it, and a
    worker's that differs from the client's is refused (check_worker)."""
    import cloudpickle

    from . import shipping

    cloudpickle.register_pickle_by_value(shipping)  # the scheduler and workers cannot import it before it is there
    name = f"latentsr-engine-{engine_version()[:16]}"
    data = engine_zip()
    try:
        client.register_plugin(shipping.EngineOnScheduler(f"{name}.zip", data), name=name)
        client.register_plugin(shipping.EngineOnWorker(f"{name}.zip", data), name=name)  # raises a worker's error
    except Exception as exc:  # noqa: BLE001 - whatever stops it, in one line
        raise LatentSRError(f"cannot install LatentSR's engine on the Dask cluster: {type(exc).__name__}: "
                            f"{raster.one_line(exc)}") from None


def card_sha256(req) -> str | None:
    """The SHA-256 of the model card the request ``req`` runs with (it holds the weights' and graphs'
    SHA-256), or None when the method has no model."""
    if req.options.method not in LEARNED:
        return None
    return model_fingerprint(req.options.model)[0]


def model_fingerprint(ref: str | None) -> tuple:
    """What says that a model folder is still the one a method was built from: its card's SHA-256
    and the name, size, modification time and inode of each of its files (a folder replaced at the
    same path, or a file rewritten in place, changes it)."""
    folder = modelfile.resolve(ref)
    try:
        card = hashlib.sha256((folder / modelfile.CARD).read_bytes()).hexdigest()
        files = sorted((entry.name, *stat_key(entry.stat())) for entry in os.scandir(folder) if entry.is_file())
    except OSError as exc:
        raise LatentSRError(f"cannot read the model folder {folder}: {exc.strerror or exc}") from None
    return card, tuple(files)


def stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


class SchedulerLost(LatentSRError):
    """The client lost its connection to the scheduler in the middle of a run."""


def run_blocks(client, job: Job, plan: TilePlan, work: list[Block], progress: Callable[[float], None],
               is_cancelled: Callable[[], bool]) -> None:
    """Run every block on the cluster; return when all shards are in place. On failure or cancel the
    running tasks are stopped and the futures cancelled before this raises; a lost scheduler ends
    the run at once (there is nobody left to tell the workers). Once no task of the run is left,
    its progress topic and cancel Event are removed from the scheduler."""
    distributed = import_distributed()
    tiles = [len(rows) * len(cols) for rows, cols in (plan.reach(b.cells) for b in work)]
    total = sum(tiles)
    done = [0.0] * len(work)  # the fraction of each block's tiles done

    def on_event(event) -> None:
        index, fraction = event[1]
        done[index] = max(done[index], fraction)

    client.subscribe_topic(job.name, on_event)
    stop = distributed.Event(job.name, client=client)
    futures = [client.submit(run_block, job, block, key=f"latentsr-block-{block.index:05d}-{job.name[9:17]}",
                             pure=False) for block in work]
    try:
        while True:
            time.sleep(POLL_SECONDS)
            check_scheduler(client, job)
            for future in futures:
                if future.status == "error":
                    raise block_error(future.exception())
                if future.status == "cancelled":
                    raise LatentSRError("the cluster cancelled a task of this run")
            finished = [f.status == "finished" for f in futures]
            for i, ok in enumerate(finished):
                if ok:
                    done[i] = 1.0
            progress(sum(d * n for d, n in zip(done, tiles)) / total)
            if all(finished):
                break
            if is_cancelled():
                raise Cancelled()
        if not all(f.result() for f in futures):
            raise Cancelled()
    except BaseException:
        if client.status == "running":
            stop.set()
            deadline = time.monotonic() + STOP_SECONDS
            while any(f.status == "pending" for f in futures) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)  # each running task stops at its next tile, the others at once
            client.cancel(futures)
        raise
    finally:
        if client.status == "running":
            client.unsubscribe_topic(job.name)
            if not any(f.status == "pending" for f in futures):  # else a task still running must see the Event
                forget_run(client, stop)


def check_scheduler(client, job: Job) -> None:
    if client.status != "running":
        raise SchedulerLost(f"lost the Dask scheduler at {job.request.cluster} during the run (it stopped, or the "
                            f"network failed): nothing was written")


def forget_run(client, stop) -> None:
    """Remove the run's cancel Event (cleared, the scheduler drops it) and progress topic from the
    scheduler: a long-lived scheduler would keep one of each per run."""
    try:
        stop.clear()
        client.run_on_scheduler(drop_topic, stop.name)
    except Exception:  # noqa: BLE001 - the run's outcome stands; what is left costs the scheduler a few bytes
        log.debug("cannot remove the run's topic and Event from the scheduler", exc_info=True)


async def drop_topic(name: str, dask_scheduler=None) -> None:
    """On the scheduler: remove the event topic ``name`` (Dask has no public call for that; its
    broker keeps every topic it has seen). The client's unsubscribe travels on its batched stream
    and can arrive after this call, which would bring the topic back: wait for it first (a second
    at most)."""
    topics = dask_scheduler._broker._topics
    for _ in range(100):
        if name not in topics or not topics[name].subscribers:
            break
        await asyncio.sleep(0.01)
    topics.pop(name, None)


def block_error(exc: BaseException | None) -> LatentSRError:
    if isinstance(exc, LatentSRError):
        return LatentSRError(str(exc))
    if "deserializ" in str(exc):
        return LatentSRError(f"the Dask scheduler or workers cannot load LatentSR's engine ({module_root()}), which "
                             f"the client sends them: both need its dependencies (numpy, GDAL, and onnxruntime or "
                             f"torch) and no other LatentSR on their PYTHONPATH (Dask reads the tasks on the "
                             f"scheduler too)")
    return LatentSRError(f"a block failed on the cluster: {type(exc).__name__}: {raster.one_line(exc)}")


def module_root() -> str:
    """The package name the workers must import the engine under (engine, or latentsr.engine in QGIS)."""
    return __name__.rsplit(".", 1)[0]


def module_home() -> str:
    """Where module_root() is imported from: a folder, or the zip a client shipped (ship_engine)."""
    home = os.path.dirname(os.path.abspath(__file__))
    for _ in module_root().split("."):
        home = os.path.dirname(home)
    return home


def run_block(job: Job, block: Block) -> bool:
    """A worker's task: the block's cells of every output into its shards. False if the run was
    cancelled before the block was done (nothing of it is left then)."""
    from distributed import Event, get_worker

    stop = Event(job.name)
    if stop.is_set():
        return False
    worker = get_worker()
    req = job.request
    model = check_worker(job, worker.address)
    src, plan, shards = None, None, []
    gdal.PushErrorHandler(gdal_to_log)  # GDAL's own messages must not reach the worker's stderr
    fix_mmap_threshold()  # as the CLI does for its process: the networks' tensors must not pile up in the heap
    try:
        src, info = open_input(req, job.window)
        method = worker_method(req, model)
        plan = tile_plan(info.width, info.height, job.scale, job.axes, req.tile, req.overlap,
                         method.halo(job.scale) + FILL_ITERATIONS)
        kinds = [(info.gdal_type, info.signed_byte), (raster.FLOAT32, False)][:len(block.shards)]
        for path, (dtype, signed), final in zip(block.shards, kinds, job.final or (False,) * len(block.shards)):
            shards.append(Shard(path, plan.window(block.cells), len(info.bands), dtype, info.masked, signed, final))
        render(req, src, info, job.norms, method, plan, shards, block.cells,
               lambda f: worker.log_event(job.name, [block.index, f]), stop.is_set)
        for shard in shards:
            shard.finish()
        return True
    except Cancelled:
        return False
    except Exception as exc:  # noqa: BLE001 - the client shows it as one line that names the window
        raise LatentSRError(f"{window_text(plan, block, job.window)}: {raster.one_line(exc)}") from None
    finally:
        for shard in shards:
            shard.discard()
        if src is not None and job.window:
            raster.release_clip(src)
        gdal.PopErrorHandler()


def gdal_to_log(err_class: int, err_no: int, message: str) -> None:
    logging.getLogger("gdal").debug("GDAL error class %d, number %d: %s", err_class, err_no, message.strip())


def window_text(plan: TilePlan | None, block: Block, window) -> str:
    """The block's place: its output rows and columns, and the input rows and columns its tiles
    read (those of ``window``'s whole input when a part is processed)."""
    cells = block.cells
    if plan is None:
        return (f"block {block.index + 1} (cell rows {cells.rows.start}-{cells.rows.stop - 1}, cell columns "
                f"{cells.cols.start}-{cells.cols.stop - 1}) failed")
    x0, y0, w, h = plan.window(cells)
    tile_rows, tile_cols = plan.reach(cells)
    dx, dy = window[:2] if window else (0, 0)
    in_y0, in_y1 = plan.rows[tile_rows.start].in_start + dy, plan.rows[tile_rows.stop - 1].in_stop + dy
    in_x0, in_x1 = plan.cols[tile_cols.start].in_start + dx, plan.cols[tile_cols.stop - 1].in_stop + dx
    return (f"output rows {y0}-{y0 + h - 1}, columns {x0}-{x0 + w - 1} "
            f"(input rows {in_y0}-{in_y1 - 1}, columns {in_x0}-{in_x1 - 1}) failed")


def open_input(req, window):
    """The input as the client saw it: the dataset (clipped to ``window``) and its description."""
    bands = list(req.bands) if req.bands else None
    whole = raster.open_raster(req.input)
    if not window:
        return whole, raster.describe(whole, bands)
    src = raster.clipped(whole, window)
    return src, raster.describe(src, bands)


def check_worker(job: Job, where: str) -> tuple | None:
    """Refuse a worker whose engine or model is not the client's; the model's fingerprint (None
    for a method without a model)."""
    if engine_version() != job.engine:
        raise LatentSRError(f"the Dask worker at {where} runs another version of LatentSR's engine than the client "
                            f"(its {module_root()} is in {module_home()}): take LatentSR off the worker's PYTHONPATH "
                            f"(the client sends its own engine) and restart the worker")
    if job.card is None:
        return None
    try:
        model = model_fingerprint(job.request.options.model)
    except LatentSRError as exc:
        raise LatentSRError(f"on the Dask worker at {where}: {exc}") from None
    if model[0] != job.card:
        raise LatentSRError(f"the model {job.request.options.model} on the Dask worker at {where} is not the client's (its "
                            f"model card differs): give the workers the client's model folder")
    return model


def method_key(req, model: tuple | None) -> tuple:
    """What decides the method a worker builds for the request ``req``: its options' method_key
    (engine.methods.RunOptions: every option that builds the method) and the model folder's
    fingerprint (model_fingerprint)."""
    return req.options.method_key(), model


_methods = threading.local()


def worker_method(req, model: tuple | None):
    """The request's method, built once per worker thread for its method_key (the last one only: one
    model in memory)."""
    key = method_key(req, model)
    if getattr(_methods, "key", None) != key:
        _methods.key, _methods.method = None, None
        _methods.method, _methods.key = req.options.make_method(), key
    return _methods.method


class Shard:
    """The pixels of one output (its mask too, if ``masked``) in ``window`` (x0, y0, width, height),
    written into a GeoTIFF under a scratch name of its own and renamed to ``path`` by ``finish``
    (``write`` takes the output's coordinates): a rerun of the same block (after a lost worker)
    never sees a half file. A ``final`` shard is one of a .vrt output's own files: tiled and
    compressed as a packed output (engine.output.OutputRaster); else uncompressed, for the client
    to pack."""

    def __init__(self, path: str, window: tuple[int, int, int, int], bands: int, dtype: int, masked: bool = False,
                 signed: bool = False, final: bool = False):
        self.path, self.masked = path, masked
        self.x0, self.y0, width, height = window
        self.scratch = f"{path}.{uuid.uuid4().hex[:8]}.part"
        options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "BIGTIFF=IF_NEEDED", "INTERLEAVE=BAND"]
        if final:
            predictor = "3" if gdal.GetDataTypeName(dtype).startswith("Float") else "2"
            options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", f"PREDICTOR={predictor}",
                       "BIGTIFF=IF_SAFER"]
        if signed:
            options.append("PIXELTYPE=SIGNEDBYTE")
        try:
            with output.internal_masks():
                self.ds = gdal.GetDriverByName("GTiff").Create(self.scratch, width, height, bands, dtype, options)
                if masked:
                    self.ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        except RuntimeError as exc:
            raise LatentSRError(f"cannot create a shard next to the output: {raster.one_line(exc)}") from None

    def write(self, data: np.ndarray, x0: int, y0: int, valid: np.ndarray | None = None) -> None:
        def write_bands():
            for i in range(data.shape[0]):
                self.ds.GetRasterBand(i + 1).WriteArray(data[i], x0 - self.x0, y0 - self.y0)
            if self.masked and valid is not None:  # as engine.output.OutputRaster.write
                mask = self.ds.GetRasterBand(1).GetMaskBand()
                mask.WriteArray(np.where(valid.any(axis=0), 255, 0).astype(np.uint8), x0 - self.x0, y0 - self.y0)
        output.OutputRaster._writing(write_bands)

    def flush(self) -> None:
        output.OutputRaster._writing(lambda: self.ds.FlushCache())

    def finish(self) -> None:
        output.OutputRaster._writing(lambda: self.ds.FlushCache())
        self.ds = None
        os.replace(self.scratch, self.path)

    def discard(self) -> None:
        with raster.quiet_gdal():
            self.ds = None
        if os.path.exists(self.scratch):
            os.remove(self.scratch)
