"""--cluster on this machine, and a scaling model (python -m training.bench cluster --out docs/BENCHMARKS.md).

A real NAIP scene (R, G, B) resampled to SIZE² is super-resolved ×4 through the engine's CLI entry
point, each run in its own process, and the parts of a cluster run's time are measured apart:

- a one-core worker's throughput: LCMSR (the default method and detail) in one process with one
  thread (OMP_NUM_THREADS=1, which ONNX Runtime follows as a Dask nanny's worker does), its CPU
  seconds per output MP after its start-up (the same run on a 64² LR). CPU time, not wall time, so
  that other jobs on this shared machine do not count; a worker with a core of its own takes about
  that. It covers what a worker does per pixel: reading, the tiles with their overlap, blending and
  writing its tiled DEFLATE shard (a .vrt output's form: the single run's packing is that work);
- start-up: a cluster's fixed cost (64² bicubic on local:2 against one process: start, connect,
  ship the engine, close) and a worker's model loading (the 64² LCMSR run against the 64² bicubic);
- the overhead of a band: bicubic on local:1 with one band per tile row against its own choice
  (scheduling, opening the input, writing and closing the shard);
- packing a .tif output on the client (tiled DEFLATE, one thread), and the client's own CPU time into
  a .tif and into a .vrt output (bicubic on local:2), which shows that into a .vrt the client writes
  only metadata;
- a check of the model: LCMSR on local:2 into a .vrt, measured against its prediction.
The pixels of every cluster run are checked against the single run's.

Scaling model, for a square output of MP megapixels on W one-core workers: the output has R tile
rows, in bands of k rows (engine.cluster.band_rows), each band after the first also running the row
above it; the N = ceil(R / k) bands run in ceil(N / W) waves, so

  time = start-up + ceil(N / W) · ((k + 1) · c · MP / R + per_band)  [+ pack · MP into a .tif]

with c the one-core worker's seconds per output MP. Into a .tif the workers' shards are written
uncompressed (c less the packing) and the client packs serially.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from osgeo import gdal

from engine import cluster
from engine.grid import output_size
from engine.registry import BICUBIC, LCMSR
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
if os.environ.get("BENCH_ONE_ROW_BANDS"):  # every tile row its own band, to measure what a band costs
    engine.cluster.band_rows = lambda rows, workers: 1
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


def run(src: str, out: Path, method: str, where: str | None, one_row_bands: bool = False, threads: int | None = None
        ) -> dict:
    args = ["superresolve", src, str(out), "--scale", str(SCALE), "--method", method, "--seed", "1"]
    if where:
        args += ["--cluster", where]
    env = dict(os.environ, BENCH_ONE_ROW_BANDS="1" if one_row_bands else "")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}
    if result.get("rc") != 0:
        raise TrainingError(f"{method} on {where or 'one process'} failed: {done.stderr.strip().splitlines()[-1:]}")
    log.info("%s %s%s: %.1f s (client CPU %.1f s)", method, where or "single", f", {threads} thread" if threads else "",
             result["seconds"], result["cpu"])
    return result


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


@dataclass(frozen=True)
class Model:
    """The scaling model (module notes): seconds of a run from its measured parts."""

    start: float  # a cluster's fixed cost and a worker's model loading
    per_mp: float  # a one-core worker's seconds per output MP, its shard's compression included
    per_band: float
    pack: float  # the client's packing, seconds per output MP (a .tif output)

    @staticmethod
    def plan(mp: float, workers: int) -> tuple[int, int, int, int]:
        """(LR side, tile rows, rows per band, bands) of a square output of ``mp`` megapixels at ×SCALE."""
        lr = round(math.sqrt(mp * 1e6) / SCALE)
        rows = tile_rows(lr)
        k = cluster.band_rows(rows, workers)
        return lr, rows, k, math.ceil(rows / k)

    def parts(self, mp: float, workers: int, tif: bool = False) -> dict:
        _, rows, k, n = self.plan(mp, workers)
        waves = math.ceil(n / workers)
        per_mp = self.per_mp - self.pack if tif else self.per_mp  # a .tif's shards are packed by the client
        return {"start": self.start, "compute": waves * (k + 1) * per_mp * mp / rows, "bands": waves * self.per_band,
                "client": self.pack * mp if tif else 0.0, "waves": waves, "k": k, "n": n, "rows": rows}

    def seconds(self, mp: float, workers: int, tif: bool = False) -> float:
        p = self.parts(mp, workers, tif)
        return p["start"] + p["compute"] + p["bands"] + p["client"]

    def workers_for(self, mp: float, seconds: float) -> int | None:
        """The fewest one-core workers that finish ``mp`` megapixels within ``seconds``; None when no number
        does (beyond one worker per tile row, more workers change nothing: the floor)."""
        rows = self.plan(mp, 1)[1]
        return next((w for w in range(1, rows + 1) if self.seconds(mp, w) <= seconds), None)

    def floor(self, mp: float) -> float:
        """The least time of ``mp`` megapixels on any number of workers: one band of one tile row each."""
        return self.seconds(mp, self.plan(mp, 1)[1])


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


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
        src, tiny = str(tmp / f"naip_{size}.tif"), str(tmp / "naip_64.tif")
        gdal.Translate(src, str(NAIP), width=size, height=size, bandList=[1, 2, 3], resampleAlg="bilinear")
        gdal.Translate(tiny, str(NAIP), width=64, height=64, bandList=[1, 2, 3], resampleAlg="bilinear")
        r = {}
        for where in (None, "local:1", "local:2"):
            r["tiny", where] = run(tiny, tmp / "tiny.tif", BICUBIC.name, where)
        r["tiny", LCMSR.name] = run(tiny, tmp / "tiny.tif", LCMSR.name, None, threads=1)
        r[LCMSR.name, None] = run(src, tmp / "lcmsr.tif", LCMSR.name, None, threads=1)
        pack = pack_seconds(tmp / "lcmsr.tif", tmp)
        r[LCMSR.name, "local:2"] = run(src, tmp / "lcmsr.vrt", LCMSR.name, "local:2")
        for where in (None, "local:1"):
            r[BICUBIC.name, where] = run(src, tmp / "bicubic.tif", BICUBIC.name, where)
        r[BICUBIC.name, "rows"] = run(src, tmp / "rows.tif", BICUBIC.name, "local:1", one_row_bands=True)
        r[BICUBIC.name, "tif"] = run(src, tmp / "client.tif", BICUBIC.name, "local:2")
        r[BICUBIC.name, "vrt"] = run(src, tmp / "client.vrt", BICUBIC.name, "local:2")
    same = r[LCMSR.name, "local:2"]["pixels"] == r[LCMSR.name, None]["pixels"]
    same = same and all(r[BICUBIC.name, w]["pixels"] == r[BICUBIC.name, None]["pixels"]
                        for w in ("local:1", "rows", "tif", "vrt"))
    mp = output_size(size, SCALE) ** 2 / 1e6
    cores = os.cpu_count() or 1
    fixed = r["tiny", "local:2"]["seconds"] - r["tiny", None]["seconds"]
    load = r["tiny", LCMSR.name]["cpu"] - r["tiny", None]["cpu"]
    per_mp = (r[LCMSR.name, None]["cpu"] - r["tiny", LCMSR.name]["cpu"]) / mp
    rows = tile_rows(size)
    n1 = math.ceil(rows / cluster.band_rows(rows, 1))
    per_band = (r[BICUBIC.name, "rows"]["seconds"] - r[BICUBIC.name, "local:1"]["seconds"]) / max(1, rows - n1)
    model = Model(fixed + load, per_mp, max(0.0, per_band), pack / mp)  # below 0: the machine's load, taken as 0
    share = {form: r[BICUBIC.name, form]["cpu"] / r[BICUBIC.name, form]["seconds"] for form in ("tif", "vrt")}
    check = model.parts(mp, 2)
    measured = r[LCMSR.name, "local:2"]

    command = f"python -m training.bench cluster --size {size} --out docs/BENCHMARKS.md"
    lines = ["", f"## On a Dask cluster (`--cluster`) and the scaling model, {time.strftime('%Y-%m-%d')}", "",
             f"Command: `{command}` (part of `make bench`). NAIP R, G, B resampled to {size}², ×{SCALE} "
             f"(output {mp:.1f} MP, {rows} tile row{'s' * (rows > 1)}), tile {TILE}, overlap {OVERLAP}, LCMSR at its default detail, "
             f"backend auto, each run in its own process through `engine.cli.main`, on this machine's {cores} cores "
             f"({cpu_name()}), which other jobs shared while it ran (load average {os.getloadavg()[0]:.1f} at the end). "
             f"Pixels of every cluster run identical to the single run's: **{'yes' if same else 'NO'}**.", "",
             "Measured parts:", "",
             "| part | measured | how |", "|---|---|---|",
             f"| a one-core worker's throughput | **{per_mp:.2f} s per output MP** | LCMSR in one process, one thread: "
             f"{r[LCMSR.name, None]['cpu']:.1f} s CPU ({r[LCMSR.name, None]['seconds']:.1f} s wall) for {mp:.1f} MP, less "
             f"its start-up ({r['tiny', LCMSR.name]['cpu']:.1f} s CPU on 64²) |",
             f"| start-up | {model.start:.1f} s | cluster start, connect, ship, close: {fixed:.1f} s (64² bicubic on "
             f"`local:2` {r['tiny', 'local:2']['seconds']:.1f} s against one process {r['tiny', None]['seconds']:.1f} s); "
             f"a worker's model loading: {load:.1f} s CPU |",
             f"| overhead per band | {per_band:.2f} s{' (taken as 0)' if per_band < 0 else ''} | bicubic on `local:1`, {rows} one-row bands "
             f"{r[BICUBIC.name, 'rows']['seconds']:.1f} s against {n1} band{'s' * (n1 > 1)} "
             f"{r[BICUBIC.name, 'local:1']['seconds']:.1f} s |",
             f"| packing a .tif on the client | {pack / mp:.3f} s per output MP | tiled DEFLATE of the LCMSR output, one "
             f"thread: {pack:.1f} s (serial: it grows with the output) |",
             f"| the client into a .vrt | {r[BICUBIC.name, 'vrt']['cpu']:.1f} s CPU of {r[BICUBIC.name, 'vrt']['seconds']:.1f} s "
             f"({100 * share['vrt']:.0f} %) | bicubic on `local:2`; into a .tif {r[BICUBIC.name, 'tif']['cpu']:.1f} s of "
             f"{r[BICUBIC.name, 'tif']['seconds']:.1f} s ({100 * share['tif']:.0f} %): into a .vrt the workers write "
             f"the compressed shards and the client only the VRT's metadata, so nothing on the client grows with the "
             f"output |", "",
             f"Check of the model: LCMSR on `local:2` into a .vrt ({check['n']} band{'s' * (check['n'] > 1)} of "
             f"{check['k']} row{'s' * (check['k'] > 1)}) took "
             f"{measured['seconds']:.1f} s; the model predicts {model.seconds(mp, 2):.1f} s for two workers with a core "
             f"each (start-up {check['start']:.1f} s, compute {check['compute']:.1f} s, bands {check['bands']:.1f} s). "
             f"The workers used {measured['workers_cpu']:.1f} s of CPU in all; on this shared machine they did not have "
             f"a core each.", "",
             "Scaling model (module notes of `training/bench/cluster.py`): time = start-up + ceil(N / W) · ((k + 1) · "
             "c · MP / R + per_band), R tile rows in N bands of k rows (`engine.cluster.band_rows`; each band after the "
             "first also runs the row above it) on W one-core workers; c is the one-core throughput above. Predicted "
             "wall time, LCMSR into a .vrt output (into a .tif, add the client's packing: "
             f"{hours(model.pack * 1000)} per GP):", "",
             "| output | " + " | ".join(f"{w} worker{'s' * (w > 1)}" for w in WORKERS) + " | bands of k rows on 100 |",
             "|---|" + "---:|" * len(WORKERS) + "---|"]
    for big in SIZES_MP:
        p = model.parts(big, 100)
        lines.append(f"| {big / 1000:g} GP | " + " | ".join(hours(model.seconds(big, w)) for w in WORKERS)
                     + f" | {p['n']} bands of {p['k']} ({p['rows']} rows), {p['waves']} wave{'s' * (p['waves'] > 1)} |")
    big = SIZES_MP[-1]
    p = model.parts(big, 100)
    need = model.workers_for(big, TARGET_SECONDS)
    row_mp = big / p["rows"]
    lines += ["",
              f"For **100 GP on 100 one-core workers: {hours(model.seconds(big, 100))}**: start-up {p['start']:.0f} s, "
              f"compute {hours(p['compute'])}, band overhead {p['bands']:.0f} s, nothing on the client; into a .tif "
              f"{hours(model.seconds(big, 100, tif=True))}. The compute is the whole of it: each worker runs "
              f"{p['waves'] * (p['k'] + 1) * row_mp / 1000:.2f} GP ({p['waves']} band{'s' * (p['waves'] > 1)} of "
              f"{p['k']} tile rows plus the context row above, {p['rows']} rows of {row_mp:.0f} MP each) at "
              f"{per_mp:.2f} s per MP. A band is whole tile rows, so however many workers there are, one still runs "
              f"a row and the row above it: the floor is **{hours(model.floor(big))}** "
              f"({p['rows']} workers or more). Within {TARGET_SECONDS // 60} minutes takes "
              + (f"**{need} one-core workers** at this throughput" if need else
                 "**no number of workers** at this throughput (the floor is above it)")
              + f"; 100 workers would each need "
              f"{(TARGET_SECONDS - p['start'] - p['bands']) / (p['waves'] * (p['k'] + 1) * row_mp):.2f} s per "
              f"output MP ({per_mp / ((TARGET_SECONDS - p['start'] - p['bands']) / (p['waves'] * (p['k'] + 1) * row_mp)):.1f}× "
              "the throughput measured here)."]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text)
    log.info("%s", text)
    return 0 if same else 1
