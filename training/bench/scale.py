"""Memory and time against raster size (python -m training.bench scale --out docs/BENCHMARKS.md).

A real NAIP scene (R, G, B) resampled to 512², 1024² and 1536² is super-resolved ×4 through the
engine's CLI entry point (tiles, blending, GeoTIFF writing, its 256 MB GDAL cache) with each learned
method, each run in its own process: peak RSS should not grow with the raster, and time should be a
fixed start-up cost plus a constant time per output pixel (a least-squares line through the sizes).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from osgeo import gdal

from engine.registry import E2DIFFSR, LCMSR

from ..errors import TrainingError

log = logging.getLogger(__name__)

NAIP = Path(__file__).resolve().parents[3] / "shared" / "data" / "geotiff" / "naip" / "m_4709963_se_14_1_20200831.tif"
SIZES = (512, 1024, 1536)
METHODS = (LCMSR.name, E2DIFFSR.name)
SCALE = 4
CHILD = """
import json, resource, sys, time
from engine.cli import main
start = time.perf_counter()
rc = main(["superresolve", sys.argv[1], sys.argv[2], "--scale", sys.argv[3], "--method", sys.argv[4]])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(src: str, method: str, tmp: Path) -> dict:
    out = tmp / f"sr_{method}.tif"
    done = subprocess.run([sys.executable, "-c", CHILD, src, str(out), str(SCALE), method],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    if result.get("rc") != 0:
        raise TrainingError(f"{method} failed: {done.stderr.strip().splitlines()[-1:]}")
    out.unlink()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench scale", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="append the table to this Markdown file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gdal.UseExceptions()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in SIZES:
            src = str(tmp / f"naip_{size}.tif")
            gdal.Translate(src, str(NAIP), width=size, height=size, bandList=[1, 2, 3], resampleAlg="bilinear")
            for method in METHODS:
                r = run(src, method, tmp)
                rows.append({"size": size, "method": method, **r})
                log.info("%s %d² ×%d: %.1f s, %.0f MB", method, size, SCALE, r["seconds"], r["peak_rss_mb"])
    lines = ["", "## Memory and time against raster size", "",
             f"Command: `python -m training.bench scale --out docs/BENCHMARKS.md` (part of `make bench`). "
             f"NAIP R, G, B resampled to each size, ×{SCALE} through the engine (default tile 256, overlap 32, "
             f"backend auto), one process per run through `engine.cli.main`.", "",
             "| method | LR size | output MP | time (s) | s / output MP | peak RSS (MB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        mp = (r["size"] * SCALE) ** 2 / 1e6
        lines.append(f"| {r['method']} | {r['size']}² | {mp:.1f} | {r['seconds']:.1f} | {r['seconds'] / mp:.2f} | {r['peak_rss_mb']:.0f} |")
    for method in METHODS:
        runs = [next(r for r in rows if r["method"] == method and r["size"] == s) for s in SIZES]
        mp = np.array([(s * SCALE) ** 2 / 1e6 for s in SIZES])
        seconds = np.array([r["seconds"] for r in runs])
        per_mp, fixed = np.polyfit(mp, seconds, 1)
        worst = np.max(np.abs(fixed + per_mp * mp - seconds) / seconds)
        lines.append("")
        lines.append(f"{method}: peak RSS {runs[-1]['peak_rss_mb'] / runs[0]['peak_rss_mb']:.2f}× from {SIZES[0]}² to "
                     f"{SIZES[-1]}² ({mp[-1] / mp[0]:.0f}× the pixels). Time = {fixed:.1f} s once (imports, model, "
                     f"sessions) + {per_mp:.2f} s per output MP; the line misses no run by more than {100 * worst:.1f} %.")
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text)
    log.info("%s", text)
    return 0

