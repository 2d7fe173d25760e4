"""CPU benchmark of the two backends: ONNX Runtime against torch eager (python -m training.bench backends).

Each (method, backend) runs in its own process, so that its peak RSS is its own (the ONNX process
never imports torch). A process builds the method from the bundle on the CPU, super-resolves one
random LR tile once to warm up, then ``repeats`` times; the median is reported as seconds per tile
and per output megapixel. Both backends get the same thread count: --threads, default os.cpu_count()
(what the engine gives ONNX Runtime). Without --model the bundle is a randomly initialised
default-size one, exported to ONNX in a temporary folder.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.registry import E2DIFFSR, LCMSR, REGRESSION

log = logging.getLogger(__name__)

RUNS = ((LCMSR.name, 1), (REGRESSION.name, None), (E2DIFFSR.name, 4))
BACKENDS = ("torch", "onnx")


def measure(backend: str, model: str, name: str, steps: int | None, tile: int, scale: float, repeats: int,
            threads: int) -> dict:
    """Time and peak RSS of one method on one backend, in this process."""
    import numpy as np

    from engine.grid import Grid
    from engine.methods import MethodOptions, build_method

    options = MethodOptions(steps=steps, backend=backend, device="cpu", model=model, threads=threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    method = build_method(name, options)
    x = np.random.default_rng(0).random((3, tile, tile), dtype=np.float32)
    grid = Grid.whole(tile, tile, scale)
    method(x, grid)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        method(x, grid)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"method": name, "steps": steps or 0, "backend": backend, "seconds": seconds,
            "seconds_per_mp": seconds / (grid.shape[0] * grid.shape[1] / 1e6),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_imported": "torch" in sys.modules}


def run_child(backend: str, model: str, name: str, steps: int | None, tile: int, scale: float, repeats: int,
              threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        args = json.dumps([backend, model, name, steps, tile, scale, repeats, threads, str(result)])
        root = Path(__file__).resolve().parents[2]
        proc = subprocess.run([sys.executable, "-m", "training.bench", "backends", "--child", args], cwd=root,
                              capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{backend} {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return json.loads(result.read_text())


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("torch", "onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def markdown(rows: list[dict], model: str | None, tile: int, scale: float, repeats: int, threads: int) -> str:
    from engine.grid import output_size
    from training.trainer import cpu_name  # here, not at the top: the ONNX child processes never import torch

    out = output_size(tile, scale)
    label = model or "a random default-size bundle"
    command = (f"python -m training.bench backends --tile {tile} --scale {scale:g} --repeats {repeats} --threads {threads}"
               + (f" --model {model}" if model else ""))
    lines = [f"### ONNX Runtime against torch eager on CPU ({time.strftime('%Y-%m-%d')})", "",
             f"Model: {label}; one {tile}×{tile} random LR tile at ×{scale:g} ({out}×{out} out); median of "
             f"{repeats} after a warm-up; {threads} thread{'s' * (threads > 1)} on {cpu_name()}; {versions()}. "
             f"Each row is its own process: peak RSS includes the imports (the ONNX rows never import torch). "
             f"Command: `{command}`.", "",
             "| method | backend | s per tile | s per output MP | peak RSS (MB) | ONNX speed-up |",
             "|---|---|---:|---:|---:|---:|"]
    by_key = {(r["method"], r["backend"]): r for r in rows}
    for r in rows:
        method = r["method"] + (f", {r['steps']} step{'s' * (r['steps'] > 1)}" if r["steps"] else "")
        speed = ""
        if r["backend"] == "onnx":
            speed = f"{by_key[r['method'], 'torch']['seconds'] / r['seconds']:.2f}×"
        lines.append(f"| {method} | {r['backend']} | {r['seconds']:.3f} | {r['seconds_per_mp']:.3f} | "
                     f"{r['peak_rss_mb']:.0f} | {speed} |")
    return "\n".join(lines) + "\n"


def run(model: str | None = None, tile: int = 256, scale: float = 4.0, repeats: int = 3, threads: int | None = None,
        out: str | None = None) -> list[dict]:
    """Benchmark every (method, backend) in RUNS × BACKENDS; log the markdown table, append it to ``out``."""
    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            from .. import export
            from ..bundle import random_bundle, write

            folder = write(Path(tmp) / "random-default", *random_bundle("default", name="random-default"))
            export.export(str(folder))
            path = str(folder)
        else:
            from engine import modelfile

            path = str(modelfile.resolve(model))
        rows = []
        for name, steps in RUNS:
            for backend in BACKENDS:
                rows.append(run_child(backend, path, name, steps, tile, scale, repeats, threads))
                if backend == "onnx" and rows[-1]["torch_imported"]:
                    raise RuntimeError("the ONNX Runtime process imported torch: its peak RSS would be wrong")
                log.info("  %-10s %-5s %7.3f s per tile  %6.3f s/MP  %5.0f MB peak RSS", name, backend,
                         rows[-1]["seconds"], rows[-1]["seconds_per_mp"], rows[-1]["peak_rss_mb"])
    text = markdown(rows, model, tile, scale, repeats, threads)
    log.info("\n%s", text)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write("\n" + text)
        log.info("appended to %s", out)
    return rows


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training.bench backends", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="bundle with ONNX graphs (default: a random default-size bundle, exported here)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="threads of both backends (default: os.cpu_count(), as the engine)")
    ap.add_argument("--out", help="append the markdown table to this file (e.g. docs/BENCHMARKS.md)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one measurement, in its own process (run_child)
    args = ap.parse_args(argv)
    if args.child:
        *arguments, result = json.loads(args.child)
        Path(result).write_text(json.dumps(measure(*arguments)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(args.model, args.tile, args.scale, args.repeats, args.threads, args.out)
    return 0
