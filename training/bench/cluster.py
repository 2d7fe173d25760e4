"""--cluster on this machine, and a scaling model (python -m training.bench cluster --out docs/BENCHMARKS.md).

A real NAIP scene (R, G, B) resampled to SIZE² is super-resolved ×4 through the engine's CLI entry
point, each run in its own process, and the parts of a cluster run's time are measured apart:

- a one-core task's throughput: LCMSR (the default method and detail) in one process with one
  thread (OMP_NUM_THREADS=1, which ONNX Runtime follows as a Dask nanny's worker does), its CPU
  seconds per output MP after its start-up (the same run on a 64² LR). CPU time, not wall time, so
  that other jobs on this shared machine do not count; a task with a core of its own takes about
  that. It covers what a worker does per pixel: reading, the tiles with their overlap, blending and
  writing its tiled DEFLATE shard (a .vrt output's form: the single run's packing is that work);
- start-up: a cluster's fixed cost (64² bicubic on local:2 against one process: start, connect,
  ship the engine, close) and a worker's model loading (the 64² LCMSR run against the 64² bicubic);
- the overhead of a block: bicubic on local:1 with a block per cell against its own choice
  (scheduling, opening the input, writing and closing the shard), less the bicubic tiles that the
  blocks' context rows and columns add;
- packing a .tif output on the client (tiled DEFLATE, one thread), and the client's own CPU time into
  a .tif and into a .vrt output (bicubic on local:2), which shows that into a .vrt the client writes
  only metadata; and for a 16 MP output of regression on local:4 into a .vrt;
- a check of the model and of its assumption on cores: LCMSR into a .vrt on clusters started here
  with one worker of one core, two workers of one core and one worker of two cores (two task
  threads, each with one intra-op thread), measured against the model's predictions.
The pixels of every cluster run are checked against the single run's.

Scaling model, for a square output of MP megapixels on W workers of C cores: a worker runs C tasks
at once, one per core, each on one intra-op thread, and the model takes its cores as C independent
one-core tasks (so W workers of C cores are W·C one-core task slots). The output has R × R tiles (its
cells), in blocks of k × m cells (engine.cluster.block_shape for W·C slots), each block also running
the row of tiles above it and the column to its left where it has neighbours there; the
N = ceil(R / k) · ceil(R / m) blocks run in ceil(N / (W·C)) waves, so

  time = start-up + ceil(N / (W·C)) · ((k + 1)(m + 1) · c · MP / R² + per_block)  [+ pack · MP into a .tif]

with c the one-core task's seconds per output MP. Into a .tif the workers' shards are written
uncompressed (c less the packing) and the client packs serially.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from osgeo import gdal

from engine import cluster
from engine.grid import output_size
from engine.registry import BICUBIC, LCMSR, REGRESSION
from engine.tiling import window_starts

from ..errors import TrainingError
from ..trainer import cpu_name

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
NAIP = ROOT.parent / "shared" / "data" / "geotiff" / "naip" / "m_4709963_se_14_1_20200831.tif"
SCALE = 4
TILE, OVERLAP = 256, 32  # the engine's defaults
CHILD = """
import hashlib, json, os, resource, sys, time
from osgeo import gdal
import engine.cluster
from engine.cli import main
if os.environ.get("BENCH_ONE_CELL_BLOCKS"):  # every cell its own block, to measure what a block costs
    engine.cluster.block_shape = lambda rows, cols, workers: (1, 1)
def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
start, cpu0 = time.perf_counter(), cpu(resource.RUSAGE_SELF)
rc = main(sys.argv[1:])
seconds, cpu_seconds = time.perf_counter() - start, cpu(resource.RUSAGE_SELF) - cpu0  # the client (the local scheduler too)
digest = hashlib.sha256(gdal.Open(sys.argv[2]).ReadAsArray().tobytes()).hexdigest() if rc == 0 else ""
print(json.dumps({"rc": rc, "seconds": seconds, "cpu": cpu_seconds, "workers_cpu": cpu(resource.RUSAGE_CHILDREN),
                  "pixels": digest}))
"""
TARGET_SECONDS = 15 * 60  # issue 27: 100 GP on 100 workers
SIZES_MP = (1_000.0, 10_000.0, 100_000.0)  # 1, 10 and 100 GP of output
WORKERS = (1, 10, 100)
CORES = (1, 4)  # cores per worker in the tables
MAX_CORES = 64  # the most cores per worker the model is asked about
SHARE_LR = 1000  # the client's share is measured on a 16 MP output (1000² at ×4) on local:4, as issue 27 asks


def run(src: str, out: Path, method: str, where: str | None, one_cell_blocks: bool = False,
        threads: int | None = None) -> dict:
    args = ["superresolve", src, str(out), "--scale", str(SCALE), "--method", method, "--seed", "1"]
    if where:
        args += ["--cluster", where]
    env = dict(os.environ, BENCH_ONE_CELL_BLOCKS="1" if one_cell_blocks else "")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}
    if result.get("rc") != 0:
        raise TrainingError(f"{method} on {where or 'one process'} failed: {done.stderr.strip().splitlines()[-1:]}")
    log.info("%s %s%s: %.1f s (client CPU %.1f s)", method, where or "single", f", {threads} thread" if threads else "",
             result["seconds"], result["cpu"])
    return result


@contextlib.contextmanager
def started(workers: int, threads: int):
    """A local Dask cluster of ``workers`` worker processes with ``threads`` task threads each, every
    task on one intra-op thread (as a Dask nanny sets it for a worker of several cores): its address,
    and a function that gives the CPU seconds its workers have used so far."""
    import dask
    import distributed

    one = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cluster.quiet_dask()  # Dask's own log lines stay out of the bench's
    with contextlib.ExitStack() as stack:
        stack.enter_context(cluster.kept_environment(dask.config.get("distributed.nanny.pre-spawn-environ", {})))
        with warnings.catch_warnings():  # "port 8787 is in use"
            warnings.simplefilter("ignore")
            local = stack.enter_context(distributed.LocalCluster(
                n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.CRITICAL, env=one))
        client = stack.enter_context(distributed.Client(local.scheduler_address, set_as_default=False))
        client.wait_for_workers(workers)

        def workers_cpu() -> float:
            usage = client.run(resource.getrusage, resource.RUSAGE_SELF).values()
            return sum(u.ru_utime + u.ru_stime for u in usage)
        yield local.scheduler_address, workers_cpu


def pack_seconds(path: Path, tmp: Path) -> float:
    """The client's packing alone: an uncompressed copy packed as engine.output.OutputRaster packs."""
    raw = tmp / "raw.tif"
    gdal.Translate(str(raw), str(path), creationOptions=["TILED=YES"])
    start = time.perf_counter()
    gdal.Translate(str(tmp / "packed.tif"), str(raw), creationOptions=[
        "TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "PREDICTOR=2", "BIGTIFF=IF_SAFER"])
    seconds = time.perf_counter() - start
    for p in (raw, tmp / "packed.tif"):
        p.unlink()
    return seconds


def tile_rows(lr: int) -> int:
    return len(window_starts(lr, TILE, OVERLAP))


def tiles_run(rows: int, k: int, m: int) -> int:
    """The tiles that all the blocks of k × m cells of a rows × rows grid run, context included: each
    block row after the first adds a context row, each block column after the first a context column
    (one tile each with the engine's tile and overlap)."""
    return (rows + math.ceil(rows / k) - 1) * (rows + math.ceil(rows / m) - 1)


@dataclass(frozen=True)
class Model:
    """The scaling model (module notes): seconds of a run from its measured parts."""

    start: float  # a cluster's fixed cost and a worker's model loading
    per_mp: float  # a one-core task's seconds per output MP, its shard's compression included
    per_block: float
    pack: float  # the client's packing, seconds per output MP (a .tif output)

    @staticmethod
    def plan(mp: float, slots: int) -> dict:
        """The blocks of a square output of ``mp`` megapixels at ×SCALE on ``slots`` one-core task
        slots: its LR side, tile rows (= columns), block shape k × m, blocks, waves and the tiles of a
        block with its context row and column."""
        lr = round(math.sqrt(mp * 1e6) / SCALE)
        rows = tile_rows(lr)
        k, m = cluster.block_shape(rows, rows, slots)
        down, across = math.ceil(rows / k), math.ceil(rows / m)
        return {"lr": lr, "rows": rows, "k": k, "m": m, "n": down * across,
                "waves": math.ceil(down * across / slots), "tiles": cluster.block_tiles(rows, rows, k, m)}

    def parts(self, mp: float, workers: int, cores: int = 1, tif: bool = False) -> dict:
        """The plan and the parts of the time of ``mp`` megapixels on ``workers`` workers of ``cores`` cores."""
        p = self.plan(mp, workers * cores)
        per_mp = self.per_mp - self.pack if tif else self.per_mp  # a .tif's shards are packed by the client
        return {**p, "start": self.start, "compute": p["waves"] * p["tiles"] * per_mp * mp / p["rows"] ** 2,
                "blocks": p["waves"] * self.per_block, "client": self.pack * mp if tif else 0.0}

    def seconds(self, mp: float, workers: int, cores: int = 1, tif: bool = False) -> float:
        p = self.parts(mp, workers, cores, tif)
        return p["start"] + p["compute"] + p["blocks"] + p["client"]

    def cores_for(self, mp: float, workers: int, seconds: float) -> int | None:
        """The fewest cores per worker with which ``workers`` workers finish ``mp`` megapixels within
        ``seconds``; None if more than MAX_CORES would be needed."""
        return next((c for c in range(1, MAX_CORES + 1) if self.seconds(mp, workers, c) <= seconds), None)

    def workers_for(self, mp: float, seconds: float, cores: int = 1) -> int | None:
        """About the fewest workers of ``cores`` cores that finish ``mp`` megapixels within ``seconds``
        (a bisection: the time falls with the workers but for the small steps of the block shapes);
        None when no number does (below the floor)."""
        rows = self.plan(mp, 1)["rows"]
        lo, hi = 1, math.ceil(rows * rows / cores)
        if self.seconds(mp, hi, cores) > seconds:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.seconds(mp, mid, cores) <= seconds else (mid + 1, hi)
        return lo

    def floor(self, mp: float) -> float:
        """The least time of ``mp`` megapixels on any number of task slots: a block of one cell each,
        with its context row and column."""
        rows = self.plan(mp, 1)["rows"]
        return self.seconds(mp, rows * rows)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


CHECKS = ((1, 1), (2, 1), (1, 2))  # (workers, cores) of the model's check on this machine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=768, help="LR size in pixels (default %(default)s)")
    ap.add_argument("--out", type=Path, help="append the section to this Markdown file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gdal.UseExceptions()
    size = args.size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, tiny, big = str(tmp / f"naip_{size}.tif"), str(tmp / "naip_64.tif"), str(tmp / f"naip_{SHARE_LR}.tif")
        for path, side in ((src, size), (tiny, 64), (big, SHARE_LR)):
            gdal.Translate(path, str(NAIP), width=side, height=side, bandList=[1, 2, 3], resampleAlg="bilinear")
        r = {}
        for where in (None, "local:1", "local:2"):
            r["tiny", where] = run(tiny, tmp / "tiny.tif", BICUBIC.name, where)
        r["tiny", LCMSR.name] = run(tiny, tmp / "tiny.tif", LCMSR.name, None, threads=1)
        r[LCMSR.name, None] = run(src, tmp / "lcmsr.tif", LCMSR.name, None, threads=1)
        pack = pack_seconds(tmp / "lcmsr.tif", tmp)
        for workers, cores in CHECKS:
            with started(workers, cores) as (address, workers_cpu):
                before = workers_cpu()
                r[LCMSR.name, workers, cores] = run(src, tmp / "lcmsr.vrt", LCMSR.name, address)
                r[LCMSR.name, workers, cores]["workers_cpu"] = workers_cpu() - before
        for where in (None, "local:1"):
            r[BICUBIC.name, where] = run(src, tmp / "bicubic.tif", BICUBIC.name, where)
        r[BICUBIC.name, "cells"] = run(src, tmp / "cells.tif", BICUBIC.name, "local:1", one_cell_blocks=True)
        r[BICUBIC.name, "tif"] = run(src, tmp / "client.tif", BICUBIC.name, "local:2")
        r[BICUBIC.name, "vrt"] = run(src, tmp / "client.vrt", BICUBIC.name, "local:2")
        r[REGRESSION.name, None] = run(big, tmp / "regression.tif", REGRESSION.name, None)
        r[REGRESSION.name, "local:4"] = run(big, tmp / "regression.vrt", REGRESSION.name, "local:4")
    same = all(r[LCMSR.name, w, c]["pixels"] == r[LCMSR.name, None]["pixels"] for w, c in CHECKS)
    same = same and all(r[BICUBIC.name, w]["pixels"] == r[BICUBIC.name, None]["pixels"]
                        for w in ("local:1", "cells", "tif", "vrt"))
    same = same and r[REGRESSION.name, "local:4"]["pixels"] == r[REGRESSION.name, None]["pixels"]
    mp = output_size(size, SCALE) ** 2 / 1e6
    share_mp = output_size(SHARE_LR, SCALE) ** 2 / 1e6
    cores = os.cpu_count() or 1
    fixed = r["tiny", "local:2"]["seconds"] - r["tiny", None]["seconds"]
    load = r["tiny", LCMSR.name]["cpu"] - r["tiny", None]["cpu"]
    per_mp = (r[LCMSR.name, None]["cpu"] - r["tiny", LCMSR.name]["cpu"]) / mp
    rows = tile_rows(size)
    own = Model.plan(mp, 1)
    own_tiles, cell_tiles = tiles_run(rows, own["k"], own["m"]), tiles_run(rows, 1, 1)
    own_seconds, cells_seconds = r[BICUBIC.name, "local:1"]["seconds"], r[BICUBIC.name, "cells"]["seconds"]
    tile_seconds = max(0.0, own_seconds - r["tiny", "local:1"]["seconds"] - pack) / own_tiles  # bicubic, per tile
    per_block = (cells_seconds - own_seconds - (cell_tiles - own_tiles) * tile_seconds) / max(1, rows * rows - own["n"])
    model = Model(fixed + load, per_mp, max(0.0, per_block), pack / mp)  # below 0: the machine's load, taken as 0
    worker_mp = (r[LCMSR.name, 1, 1]["workers_cpu"] - load) / mp  # the same tiles on a Dask worker of one core
    on_workers = Model(model.start, worker_mp, model.per_block, model.pack)
    share = {form: r[BICUBIC.name, form]["cpu"] / r[BICUBIC.name, form]["seconds"] for form in ("tif", "vrt")}
    big_share = r[REGRESSION.name, "local:4"]["cpu"] / r[REGRESSION.name, "local:4"]["seconds"]

    def blocks_text(p: dict) -> str:
        return f"{p['n']} block{'s' * (p['n'] > 1)} of {p['k']} × {p['m']}"

    command = f"python -m training.bench cluster --size {size} --out docs/BENCHMARKS.md"
    lines = ["", f"## On a Dask cluster (`--cluster`) and the scaling model, {time.strftime('%Y-%m-%d')}", "",
             f"Command: `{command}` (part of `make bench`). NAIP R, G, B resampled to {size}², ×{SCALE} "
             f"(output {mp:.1f} MP, {rows} × {rows} tiles), tile {TILE}, overlap {OVERLAP}, LCMSR at its default detail, "
             f"backend auto, each run in its own process through `engine.cli.main`, on this machine's {cores} cores "
             f"({cpu_name()}), which other jobs shared while it ran (load average {os.getloadavg()[0]:.1f} at the end). "
             f"Pixels of every cluster run identical to the single run's: **{'yes' if same else 'NO'}**.", "",
             "Measured parts:", "",
             "| part | measured | how |", "|---|---|---|",
             f"| a one-core task's throughput | **{per_mp:.2f} s per output MP** | LCMSR in one process, one thread: "
             f"{r[LCMSR.name, None]['cpu']:.1f} s CPU ({r[LCMSR.name, None]['seconds']:.1f} s wall) for {mp:.1f} MP, less "
             f"its start-up ({r['tiny', LCMSR.name]['cpu']:.1f} s CPU on 64²) |",
             f"| the same on a Dask worker of one core | {worker_mp:.2f} s per output MP | the workers' CPU of the "
             f"check below on one worker of one core (one block of all the tiles: the same work), less the model "
             f"loading |",
             f"| start-up | {model.start:.1f} s | cluster start, connect, ship, close: {fixed:.1f} s (64² bicubic on "
             f"`local:2` {r['tiny', 'local:2']['seconds']:.1f} s against one process {r['tiny', None]['seconds']:.1f} s); "
             f"a worker's model loading: {load:.1f} s CPU |",
             f"| overhead per block | {per_block:.2f} s{' (taken as 0)' if per_block < 0 else ''} | bicubic on `local:1`, "
             f"{rows * rows} one-cell blocks ({cell_tiles} tiles with their context) {cells_seconds:.1f} s against "
             f"{blocks_text(own)} ({own_tiles} tiles) {own_seconds:.1f} s, less the extra tiles at "
             f"{tile_seconds:.3f} s each |",
             f"| packing a .tif on the client | {pack / mp:.3f} s per output MP | tiled DEFLATE of the LCMSR output, one "
             f"thread: {pack:.1f} s (serial: it grows with the output) |",
             f"| the client into a .vrt | {r[BICUBIC.name, 'vrt']['cpu']:.1f} s CPU of {r[BICUBIC.name, 'vrt']['seconds']:.1f} s "
             f"({100 * share['vrt']:.0f} %) | bicubic on `local:2`; into a .tif {r[BICUBIC.name, 'tif']['cpu']:.1f} s of "
             f"{r[BICUBIC.name, 'tif']['seconds']:.1f} s ({100 * share['tif']:.0f} %): into a .vrt the workers write "
             f"the compressed shards and the client only the VRT's metadata, so nothing on the client grows with the "
             f"output |",
             f"| the client, {share_mp:.0f} MP into a .vrt on `local:4` | **{100 * big_share:.1f} %** of the wall time | "
             f"regression, {SHARE_LR}² ×{SCALE}: {r[REGRESSION.name, 'local:4']['cpu']:.2f} s CPU of "
             f"{r[REGRESSION.name, 'local:4']['seconds']:.1f} s (the local scheduler runs in the client's process "
             f"and counts too) |", "",
             "Check of the model and of its assumption on cores: LCMSR into a .vrt on local clusters started by the "
             "bench (so without the processes' start), every task on one intra-op thread:", "",
             "| cluster | blocks | measured | predicted | workers' CPU |", "|---|---|---:|---:|---:|"]
    for workers, c in CHECKS:
        p, measured = model.parts(mp, workers, c), r[LCMSR.name, workers, c]
        lines.append(f"| {workers} worker{'s' * (workers > 1)} of {c} core{'s' * (c > 1)} | {blocks_text(p)}, "
                     f"{p['waves']} wave{'s' * (p['waves'] > 1)} | {measured['seconds']:.1f} s | "
                     f"{model.seconds(mp, workers, c):.1f} s | {measured['workers_cpu']:.1f} s |")
    one, two, threads = (r[LCMSR.name, w, c]["seconds"] for w, c in CHECKS)
    lines += ["",
              f"One worker of two cores took {threads / two:.2f}× the time of two workers of one core, and "
              f"{threads / one:.2f}× that of one worker of one core (two one-core tasks in one worker: "
              f"{one / threads:.2f}× the speed of one; two workers: {one / two:.2f}×; the model: "
              f"{model.seconds(mp, 1) / model.seconds(mp, 2):.2f}×). On this shared 2-core machine the two tasks "
              f"did not have a core each, so what it checks is that the cores of one worker (its task threads) "
              f"scale as the one-core tasks of separate workers do; the model's assumption for workers of C cores "
              f"is that C such tasks run at the one-core throughput each (no shared memory bandwidth or cache limits "
              f"between them, which a machine with cores to spare would have to confirm).", "",
              "Scaling model (module notes of `training/bench/cluster.py`): time = start-up + ceil(N / (W·C)) · "
              "((k + 1)(m + 1) · c · MP / R² + per_block), R × R tiles in N blocks of k × m cells "
              "(`engine.cluster.block_shape` for W·C task slots; each block also runs the row of tiles above it and "
              "the column to its left), on W workers of C cores, each core a one-core task; c is the one-core "
              "throughput above. Predicted wall time, LCMSR into a .vrt output (into a .tif, add the client's "
              f"packing: {hours(model.pack * 1000)} per GP):", ""]
    for c in CORES:
        lines += [f"Workers of {c} core{'s' * (c > 1)}:", "",
                  "| output | " + " | ".join(f"{w} worker{'s' * (w > 1)}" for w in WORKERS) + " | blocks on 100 |",
                  "|---|" + "---:|" * len(WORKERS) + "---|"]
        for big_mp in SIZES_MP:
            p = model.parts(big_mp, 100, c)
            lines.append(f"| {big_mp / 1000:g} GP | " + " | ".join(hours(model.seconds(big_mp, w, c)) for w in WORKERS)
                         + f" | {blocks_text(p)} ({p['rows']} × {p['rows']} tiles), {p['waves']} "
                         f"wave{'s' * (p['waves'] > 1)} |")
        lines.append("")
    big_mp = SIZES_MP[-1]
    p1, p4 = model.parts(big_mp, 100, 1), model.parts(big_mp, 100, 4)
    need = model.cores_for(big_mp, 100, TARGET_SECONDS)
    tile_mp = big_mp / p1["rows"] ** 2
    workers = model.workers_for(big_mp, TARGET_SECONDS)
    lines += [f"For **100 GP on 100 workers: {hours(model.seconds(big_mp, 100, 1))} with one core each** "
              f"(start-up {p1['start']:.0f} s, compute {hours(p1['compute'])}, block overhead {p1['blocks']:.0f} s, "
              f"nothing on the client; into a .tif {hours(model.seconds(big_mp, 100, 1, tif=True))}): each worker runs "
              f"a block of {p1['k']} × {p1['m']} tiles with its context, {p1['tiles']} tiles of {tile_mp:.2f} MP at "
              f"{per_mp:.2f} s per MP. **With 4 cores each: {hours(model.seconds(big_mp, 100, 4))}** (400 tasks, "
              f"blocks of {p4['k']} × {p4['m']}, {p4['tiles']} tiles each). Within {TARGET_SECONDS // 60} minutes "
              + (f"takes **{need} cores per worker** at this throughput" if need else
                 f"takes more than {MAX_CORES} cores per worker at this throughput")
              + (f", or about {workers:,} one-core workers" if workers else "")
              + f". Blocks split the width as well as the height, so more workers always help down to one cell per "
              f"task: the floor is {hours(model.floor(big_mp))} ({p1['rows'] ** 2:,} task slots, each a cell with its "
              f"context, 4 tiles). At the Dask worker's own CPU per MP measured above ({worker_mp:.2f} s), 100 GP on "
              f"100 workers takes {hours(on_workers.seconds(big_mp, 100, 1))} with one core each and "
              f"{hours(on_workers.seconds(big_mp, 100, 4))} with 4, and 15 minutes takes "
              + (f"{on_workers.cores_for(big_mp, 100, TARGET_SECONDS)} cores per worker"
                 if on_workers.cores_for(big_mp, 100, TARGET_SECONDS) else f"more than {MAX_CORES} cores per worker")
              + "."]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text)
    log.info("%s", text)
    return 0 if same else 1
