"""--cluster on this machine, and a scaling model (python -m training.bench cluster --out docs/BENCHMARKS.md).

A real NAIP scene (R, G, B) resampled to SIZE² is super-resolved ×4 through the engine's CLI entry
point, each run in its own process: in one process, on ``local:1`` (one worker with every core) and
on ``local:2`` (two workers, half the cores each, so the cores are never oversubscribed). LCMSR gives
the speed-up; a 64² bicubic run gives the fixed cost of a cluster (starting it, connecting, closing
it); bicubic on ``local:1`` with one band per tile row against its own choice gives the overhead of a
band (scheduling, opening the input, its context tile row, writing and reading back its shard). Packing (tiled DEFLATE, serial on the
client) is timed apart on the LCMSR output. Bicubic on ``local:2`` into a .vrt output (the workers
write the compressed shards, the client only the VRT) gives the client's own CPU time against a
.tif output's. The pixels of every cluster run are checked against the single run's.

Scaling model, fitted to those runs: time = fixed + per_MP · MP · (1 + 1/k) / workers
+ per_band · bands / workers + pack · MP for a .tif output, where k is the tile rows per band
(engine.cluster.band_rows: each band also runs the tile row above it) and per_MP is a one-core
worker's LCMSR cost (from local:2); for a .vrt output the packing's compression runs on the workers
instead: + pack · MP / workers.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from osgeo import gdal

from engine import cluster
from engine.grid import output_size
from engine.registry import BICUBIC, LCMSR
from engine.tiling import window_starts

from ..errors import TrainingError

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
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, cpu0 = time.perf_counter(), cpu()
rc = main(sys.argv[1:])
seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu0  # the client's process (the local scheduler too)
digest = hashlib.sha256(gdal.Open(sys.argv[2]).ReadAsArray().tobytes()).hexdigest() if rc == 0 else ""
print(json.dumps({"rc": rc, "seconds": seconds, "cpu": cpu_seconds, "pixels": digest}))
"""


def run(src: str, out: Path, method: str, where: str | None, one_row_bands: bool = False) -> dict:
    args = ["superresolve", src, str(out), "--scale", str(SCALE), "--method", method, "--seed", "1"]
    if where:
        args += ["--cluster", where]
    env = dict(os.environ, BENCH_ONE_ROW_BANDS="1" if one_row_bands else "")
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}
    if result.get("rc") != 0:
        raise TrainingError(f"{method} on {where or 'one process'} failed: {done.stderr.strip().splitlines()[-1:]}")
    log.info("%s %s: %.1f s", method, where or "single", result["seconds"])
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


def plan(lr: int, workers: int) -> tuple[int, int, float]:
    """(tile rows per band, bands, computed tile rows / tile rows) of a square LR raster."""
    rows = tile_rows(lr)
    k = cluster.band_rows(rows, workers)
    n = math.ceil(rows / k)
    return k, n, (rows + n - 1) / rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1536, help="LR size in pixels (default %(default)s)")
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
        for method, path in ((BICUBIC.name, tiny), (BICUBIC.name, src), (LCMSR.name, src)):
            name = "tiny" if path == tiny else method
            for where in (None, "local:1", "local:2"):
                r[name, where] = run(path, tmp / f"{name}.tif", method, where)
            if name == LCMSR.name:
                pack = pack_seconds(tmp / f"{name}.tif", tmp)
            (tmp / f"{name}.tif").unlink()
        r[BICUBIC.name, "rows"] = run(src, tmp / "rows.tif", BICUBIC.name, "local:1", one_row_bands=True)
        r[BICUBIC.name, "tif"] = run(src, tmp / "client.tif", BICUBIC.name, "local:2")
        r[BICUBIC.name, "vrt"] = run(src, tmp / "client.vrt", BICUBIC.name, "local:2")
        shutil.rmtree(tmp / "client.shards")
    same = all(r[name, w]["pixels"] == r[name, None]["pixels"] for name in (BICUBIC.name, LCMSR.name) for w in ("local:1", "local:2"))
    same = same and all(r[BICUBIC.name, w]["pixels"] == r[BICUBIC.name, None]["pixels"] for w in ("rows", "tif", "vrt"))
    mp = output_size(size, SCALE) ** 2 / 1e6
    fixed = {w: r["tiny", w]["seconds"] - r["tiny", None]["seconds"] for w in ("local:1", "local:2")}
    k1, n1, extra1 = plan(size, 1)
    k2, n2, extra2 = plan(size, 2)
    rows = tile_rows(size)
    per_band = (r[BICUBIC.name, "rows"]["seconds"] - r[BICUBIC.name, "local:1"]["seconds"]) / max(1, rows - n1)
    pack_mp = pack / mp
    # a one-core worker's LCMSR seconds per output MP, from local:2 (each worker one of the two cores)
    per_mp = (r[LCMSR.name, "local:2"]["seconds"] - fixed["local:2"] - per_band * n2 / 2 - pack) * 2 / (mp * extra2)
    speedup = r[LCMSR.name, "local:1"]["seconds"] / r[LCMSR.name, "local:2"]["seconds"]

    big_mp, workers = 100_000.0, 100  # 100 gigapixels of output, 100 one-core workers
    lr = round(math.sqrt(big_mp * 1e6) / SCALE)
    kb, nb, extrab = plan(lr, workers)
    compute = per_mp * big_mp * extrab / workers
    overhead = per_band * nb / workers
    predicted = fixed["local:2"] + compute + overhead + pack_mp * big_mp
    predicted_vrt = fixed["local:2"] + compute + overhead + pack_mp * big_mp / workers
    share = {form: r[BICUBIC.name, form]["cpu"] / r[BICUBIC.name, form]["seconds"] for form in ("tif", "vrt")}

    command = f"python -m training.bench cluster --size {size} --out docs/BENCHMARKS.md"
    lines = ["", f"## On a Dask cluster (`--cluster`), {time.strftime('%Y-%m-%d')}", "",
             f"Command: `{command}` (part of `make bench`). NAIP R, G, B resampled to {size}², ×{SCALE} "
             f"(output {mp:.1f} MP), tile {TILE}, overlap {OVERLAP}, backend auto, each run in its own process "
             f"through `engine.cli.main`, on this machine's {os.cpu_count()} cores, which other jobs shared "
             f"while it ran. `local:1` is one worker with {os.cpu_count()} threads, `local:2` two workers with "
             f"{max(1, (os.cpu_count() or 1) // 2)} each. Pixels of every cluster run identical to the single "
             f"run's: **{'yes' if same else 'NO'}**.", "",
             "| method | one process (s) | local:1 (s) | local:2 (s) | bands on local:1 / local:2 |",
             "|---|---|---|---|---|"]
    for name, label in ((LCMSR.name, LCMSR.short), (BICUBIC.name, BICUBIC.name), ("tiny", "bicubic, 64² LR")):
        cells = [f"{r[name, w]['seconds']:.1f}" for w in (None, "local:1", "local:2")]
        bands = f"{n1} / {n2}" if name != "tiny" else "1 / 1"
        lines.append(f"| {label} | {' | '.join(cells)} | {bands} |")
    lines += ["",
              f"- LCMSR speed-up of `local:2` over `local:1`: **{speedup:.2f}×**; `local:2` against one process: "
              f"{r[LCMSR.name, None]['seconds'] / r[LCMSR.name, 'local:2']['seconds']:.2f}×. With {tile_rows(size)} tile rows, "
              f"`local:2` runs bands of {k2} rows, each but the first with the row above it: "
              f"{100 * (extra2 - 1):.0f} % more tiles than one process.",
              f"- Fixed cost of a cluster run (start, connect, close; the 64² runs): {fixed['local:1']:.1f} s "
              f"with one worker, {fixed['local:2']:.1f} s with two.",
              f"- Overhead per band, on bicubic: **{per_band:.2f} s** (scheduling, opening the input, the context "
              f"tile row, writing and reading back the shard): `local:1` with one band per tile row ({rows} bands) "
              f"took {r[BICUBIC.name, 'rows']['seconds']:.1f} s against {r[BICUBIC.name, 'local:1']['seconds']:.1f} s "
              f"with {n1}.",
              f"- Packing on the client (tiled DEFLATE, one thread): {pack:.1f} s, {pack_mp:.3f} s per output MP.",
              f"- The client's own CPU time (its process, with the local scheduler), bicubic on `local:2`: "
              f"{r[BICUBIC.name, 'tif']['cpu']:.1f} s of {r[BICUBIC.name, 'tif']['seconds']:.1f} s ({100 * share['tif']:.0f} %) "
              f"into a .tif, **{r[BICUBIC.name, 'vrt']['cpu']:.1f} s of {r[BICUBIC.name, 'vrt']['seconds']:.1f} s "
              f"({100 * share['vrt']:.0f} %)** into a .vrt (the workers write the compressed shards).",
              "",
              f"Scaling model: time = fixed + per_MP · MP · (1 + 1/k) / workers + per_band · bands / workers + "
              f"pack · MP, with fixed = {fixed['local:2']:.1f} s, per_MP = {per_mp:.2f} s (LCMSR, one one-core "
              f"worker, from `local:2`), per_band = {per_band:.2f} s, pack = {pack_mp:.3f} s/MP.",
              f"For **100 one-core workers on a 100-gigapixel output** (×{SCALE}, LR {lr:,}², {tile_rows(lr)} tile rows "
              f"in {nb} bands of {kb}): compute {compute / 3600:.1f} h, band overhead {overhead:.0f} s, packing on "
              f"the client {pack_mp * big_mp / 3600:.1f} h: **{predicted / 3600:.1f} h** in all, against "
              f"{per_mp * big_mp / 3600:.0f} h for one such worker. Into a .vrt output the compression runs on the "
              f"workers ({pack_mp * big_mp / workers / 60:.0f} min on 100) and the client writes only the VRT: "
              f"**{predicted_vrt / 3600:.2f} h**, nearly all of it the workers' compute."]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text)
    log.info("%s", text)
    return 0 if same else 1
