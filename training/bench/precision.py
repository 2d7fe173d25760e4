"""Precision benchmark: float32, int8 and bf16 kernels of the learned methods on this CPU
(python -m training.bench precision --out docs/BENCHMARKS.md).

For regression and LCMSR (1 step, the model card's default detail) at ×SCALE, each path is timed on
one random TILE² LR tile (median of interleaved rounds, so that the load of a shared machine falls
on every path alike; the method call only, with --threads threads) and scored on the UC Merced
validation images by the quality bench's protocol (training.bench.quality: HR cropped to a multiple
of the scale, antialiased bicubic LR, output quantised to 8 bits, PSNR and LSD of engine.metrics on
a border crop of ceil(scale)). ΔPSNR and ΔLSD are against the float32 ONNX path, the engine's default
on the CPU; a path is within the limits of issue 27 when it loses at most MAX_PSNR_LOSS dB of PSNR
and MAX_LSD_RISE dB of LSD.

The paths:
- float32, ONNX Runtime: the bundle's graphs, as the engine runs them;
- int8 dynamic, ONNX Runtime: each graph of the method quantised by
  onnxruntime.quantization.quantize_dynamic (Conv and MatMul weights int8, activations quantised
  per call);
- int8 static, ONNX Runtime: quantize_static in the QDQ format (Conv and MatMul, weights int8 per
  channel, activations uint8), calibrated (min–max) on CALIBRATION training images at the scale;
- float32 and bf16, torch: the torch backend, the latter under --precision bf16 (engine.precision:
  autocast to bfloat16, networks in channels_last).

The int8 graphs are made here, in a temporary folder, from the bundle's graphs with their weights
put inside; the engine ships none (docs/BENCHMARKS.md, "Precision").
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine import metrics, modelfile, onnx_backend
from engine.card import Card
from engine.grid import Grid
from engine.methods import MethodOptions, build_method
from engine.registry import LCMSR, REGRESSION
from engine.resample import downsample

from .quality import hr_lr, images, machine, quantise

log = logging.getLogger(__name__)

METHODS = ((REGRESSION.name, None), (LCMSR.name, 1))
MAX_PSNR_LOSS, MAX_LSD_RISE = 0.05, 0.1  # dB, issue 27
CALIBRATION = 8  # training images for the static int8 calibration
QUANTISED = ("Conv", "MatMul")  # the operators int8 quantises
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "ucmerced"


@dataclass(frozen=True)
class Kernel:
    """One way of running a method: its label, the engine backend and precision, and the int8
    quantisation applied to its ONNX graphs (None: the bundle's float32 graphs)."""

    label: str
    backend: str
    precision: str = "float32"
    int8: str | None = None  # "dynamic" or "static"


PATHS = (Kernel("float32", "onnx"), Kernel("int8 dynamic", "onnx", int8="dynamic"),
         Kernel("int8 static QDQ", "onnx", int8="static"), Kernel("float32", "torch"), Kernel("bf16", "torch", "bf16"))


class Recorder:
    """Stands in for an ONNX Runtime session and keeps every feed it passes on (the calibration data)."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, outputs, feed):
        self.feeds.append({k: np.array(v) for k, v in feed.items()})
        return self.session.run(outputs, feed)

    def __getattr__(self, name):
        return getattr(self.session, name)


def graph_key(card: Card, file: str) -> str:
    return next(k for k, e in card.onnx.graphs.items() if e.file == file)


def float_model(folder: Path, card: Card, tensors: dict, key: str):
    """The ONNX model of graph ``key`` with the bundle's weights inside (its external initializers filled)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string((folder / card.onnx.graphs[key].file).read_bytes())
    inits = [numpy_helper.from_array(tensors[i.name], i.name) if i.data_location == onnx.TensorProto.EXTERNAL else i
             for i in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def computed_weights(model) -> list[str]:
    """The Conv and MatMul nodes of an ONNX model whose weight is computed in the graph, not stored
    (the flat detail path's, engine.models.decoder): ONNX Runtime's quantiser needs stored weights,
    so they stay float32."""
    stored = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in QUANTISED and n.input[1] not in stored]


def calibration_tiles(scale: float, count: int) -> list[np.ndarray]:
    """LR crops of the first ``count`` training images (one per class), as the bench degrades them."""
    files = sorted((DATA / "train").glob("*/*00.webp"))[:count]
    tiles = []
    for path in files:
        hr = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).astype(np.float32) / 255.0
        side = int(min(hr.shape[1:]) // scale * scale)
        tiles.append(downsample(hr[:, :side, :side], round(side / scale), round(side / scale)))
    return tiles


def quantised(name: str, kind: str, options: MethodOptions, scale: float, tmp: Path):
    """The ONNX method ``name`` with each of its graphs replaced by its int8 quantisation ``kind``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    folder = modelfile.resolve(options.model)
    card = modelfile.read_card(folder)
    tensors = onnx_backend.read_safetensors((folder / modelfile.WEIGHTS).read_bytes())
    feeds = {}
    if kind == "static":
        method = build_method(name, options)
        recorders = {role: Recorder(g.session) for role, g in method.nets.graphs.items()}
        for role, g in method.nets.graphs.items():
            g.session = recorders[role]
        for tile in calibration_tiles(scale, CALIBRATION):
            method(tile, Grid.whole(tile.shape[1], tile.shape[2], scale), 0)
        feeds = {role: r.feeds for role, r in recorders.items()}
    method = build_method(name, options)
    sessions = onnx_backend.Sessions(folder, card, "cpu", options.threads)
    for role, g in method.nets.graphs.items():
        key = graph_key(card, g.file)
        source, target = tmp / f"{key}.float.onnx", tmp / f"{key}.{kind}.onnx"
        model = float_model(folder, card, tensors, key)
        onnx.save(model, str(source))
        skip = computed_weights(model)
        if kind == "dynamic":
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTISED),
                             nodes_to_exclude=skip)
        else:
            quantize_static(str(source), str(target), Reader(feeds[role]), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTISED), nodes_to_exclude=skip)
        g.session = sessions.ort.InferenceSession(str(target), sessions.options(), providers=sessions.providers)
    return method


def build(path: Kernel, name: str, steps: int | None, model: str | None, threads: int, scale: float, tmp: Path):
    options = MethodOptions(steps=steps, backend=path.backend, device="cpu", model=model, threads=threads,
                            precision=path.precision)
    if path.int8:
        return quantised(name, path.int8, options, scale, tmp)
    return build_method(name, options)


def quality(method, files: list[Path], scale: float) -> dict:
    """Mean PSNR and LSD over ``files`` (the quality bench's protocol)."""
    psnr = lsd = 0.0
    for path in files:
        hr, lr = hr_lr(path, scale)
        sr = method(lr, Grid.whole(lr.shape[1], lr.shape[2], scale), 0)
        s = metrics.crop_border(quantise(sr).astype(np.float64), math.ceil(scale))
        h = metrics.crop_border(hr.astype(np.float64), math.ceil(scale))
        psnr += metrics.psnr(s, h, 255.0)
        lsd += metrics.lsd(s, h)
    return {"psnr": psnr / len(files), "lsd": lsd / len(files)}


def run(val: Path, limit: int | None, model: str | None, tile: int, scale: float, rounds: int, threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    files = images(val, limit=limit)
    x = np.random.default_rng(0).random((3, tile, tile), dtype=np.float32)
    grid = Grid.whole(tile, tile, scale)
    mp = grid.shape[0] * grid.shape[1] / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in METHODS:
            built = [build(p, name, steps, model, threads, scale, Path(tmp)) for p in PATHS]
            times = [[] for _ in PATHS]
            for method in built:
                method(x, grid, 0)  # warm-up (oneDNN creates its kernels on the first call)
            for _ in range(rounds):
                for k, method in enumerate(built):
                    start = time.perf_counter()
                    method(x, grid, 0)
                    times[k].append(time.perf_counter() - start)
            for p, method, t in zip(PATHS, built, times):
                row = {"method": name, "steps": steps, "path": p, "s_per_mp": statistics.median(t) / mp,
                       **quality(method, files, scale)}
                rows.append(row)
                log.info("%-10s %-16s %-5s %6.3f s/MP  PSNR %.3f  LSD %.3f", name, p.label, p.backend,
                         row["s_per_mp"], row["psnr"], row["lsd"])
    return rows


def markdown(rows: list[dict], command: str, n_images: int, tile: int, scale: float, rounds: int, threads: int) -> str:
    from .backends import versions

    lines = [f"## Precision: float32, int8 and bf16 on the CPU ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{command}`. Machine: {machine()}; {versions()}. Speed: one random {tile}² LR tile at "
             f"×{scale:g}, the method call only, {threads} thread{'s' * (threads > 1)}, median of {rounds} interleaved "
             f"rounds after a warm-up. Quality: {n_images} UC Merced val images at ×{scale:g} (the quality bench's "
             f"protocol), Δ against float32 ONNX Runtime, the engine's default on the CPU; within the limits: at most "
             f"{MAX_PSNR_LOSS} dB of PSNR and {MAX_LSD_RISE} dB of LSD lost.", "",
             "| method | path | backend | s / output MP | speed vs float32 ONNX | PSNR | ΔPSNR | LSD | ΔLSD | within the limits |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ref = next(q for q in rows if q["method"] == r["method"] and q["path"] == PATHS[0])
        d_psnr, d_lsd = r["psnr"] - ref["psnr"], r["lsd"] - ref["lsd"]
        ok = d_psnr >= -MAX_PSNR_LOSS and d_lsd <= MAX_LSD_RISE
        label = r["method"] + (f", {r['steps']} step" if r["steps"] else "")
        lines.append(f"| {label} | {r['path'].label} | {r['path'].backend} | {r['s_per_mp']:.3f} | "
                     f"{ref['s_per_mp'] / r['s_per_mp']:.2f}× | {r['psnr']:.3f} | {d_psnr:+.3f} | {r['lsd']:.3f} | "
                     f"{d_lsd:+.3f} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench precision", description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=Path, default=DATA / "val")
    ap.add_argument("--limit", type=int, default=42, help="val images, spread over the classes (0: all)")
    ap.add_argument("--model", help="bundle (default: the bundled default)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="append the section to this Markdown file (e.g. docs/BENCHMARKS.md)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = run(args.val, args.limit or None, args.model, args.tile, args.scale, args.rounds, args.threads)
    command = (f"python -m training.bench precision --limit {args.limit} --tile {args.tile} --scale {args.scale:g} "
               f"--rounds {args.rounds} --threads {args.threads}" + (f" --model {args.model}" if args.model else "")
               + (f" --out {args.out}" if args.out else ""))
    text = markdown(rows, command, len(images(args.val, limit=args.limit or None)), args.tile, args.scale, args.rounds,
                    args.threads)
    log.info("\n%s", text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0
