"""`make bench`: quality and speed of every method on a validation folder, written to docs/BENCHMARKS.md.

Protocol: HR is the image cropped (top-left) so that HR = LR × scale exactly; LR is its
antialiased bicubic downsampling (engine.resample.downsample, the training degradation). Each
method sees LR/255 and its output is quantised to 8 bits, as a Byte GeoTIFF would be. PSNR, SSIM,
ERGAS, SAM and the HF ratio are on RGB after cropping ceil(scale) pixels at the border; the
consistency PSNR compares downsample(SR) with LR. Each method runs in its own process, so its
peak RSS is its own; time is the method call only, per output megapixel.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine import metrics
from engine.evaluate import degraded_size
from engine.grid import Grid
from engine.methods import MethodOptions, build_method
from engine.pipeline import sample_seeds
from engine.projection import Projected
from engine.resample import downsample

log = logging.getLogger(__name__)

ROWS = (("bicubic", None), ("regression", None), ("e2diffsr", 4), ("lcmsr", 1), ("lcmsr", 2),
        ("regression+consistency", None), ("lcmsr+consistency", 1))
CALIBRATION = ("lcmsr", 1, 4, 4.0)  # method, steps, samples, scale of the uncertainty calibration
SCALES = (2.0, 2.5, 3.0, 4.0)
COMPARE = (("buildings", 84), ("denseresidential", 81), ("harbor", 85), ("freeway", 83))
COMPARE_SCALE = 4.0
CROP = 64  # HR pixels of each crop in the comparison picture


def images(folder: Path, per_class: int | None) -> list[Path]:
    files = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        found = sorted(f for f in cls.iterdir() if f.suffix.lower() in (".png", ".webp", ".tif", ".tiff"))
        files += found[:per_class] if per_class else found
    return files


def hr_lr(path: Path, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """HR (uint8 C×H×W, cropped so H = h × scale exactly) and LR (float32 in 0..1)."""
    hr = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    h, w = degraded_size(hr.shape[1], scale), degraded_size(hr.shape[2], scale)
    hr = hr[:, :round(h * scale), :round(w * scale)]
    return hr, downsample(hr.astype(np.float32) / 255.0, h, w)


def quantise(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)




def worker(method_name: str, steps: int | None, files: list[Path], scales, model: str | None, crops_dir: Path,
           backend: str) -> dict:
    """Metrics (means over images) and timing of one method at each scale, plus its peak RSS."""
    base_name, _, variant = method_name.partition("+")
    method = build_method(base_name, MethodOptions(steps=steps, backend=backend, device="cpu", model=model))
    if variant == "consistency":
        method = Projected(method)
    compare = {f"{c}{i:02d}" for c, i in COMPARE}
    nets = getattr(getattr(method, "inner", method), "nets", None)
    out = {"scales": {}, "backend": nets.backend if nets is not None else "numpy"}
    for scale in scales:
        sums, seconds, pixels = {}, 0.0, 0
        for path in files:
            hr, lr = hr_lr(path, scale)
            grid = Grid.whole(lr.shape[1], lr.shape[2], scale)
            start = time.perf_counter()
            sr = method(lr, grid)
            seconds += time.perf_counter() - start
            pixels += grid.shape[0] * grid.shape[1]
            sr8 = quantise(sr)
            m = metrics.all_metrics(sr8.astype(np.float64), hr.astype(np.float64), lr * 255.0, scale, 255.0)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
            if scale == COMPARE_SCALE and path.stem in compare:
                np.save(crops_dir / f"{path.stem}.npy", sr8)
        row = {k: v / len(files) for k, v in sums.items()}
        if not math.isfinite(row["consistency_psnr"]):
            row["consistency_psnr"] = math.inf
        row["s_per_mp"] = seconds / (pixels / 1e6)
        out["scales"][str(scale)] = row
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def calibration(files: list[Path], model: str | None, backend: str) -> dict:
    """Pearson correlation, pooled over all pixels of all images, between the per-pixel std of K
    samples and the absolute error of their mean against HR (8-bit units)."""
    name, steps, samples, scale = CALIBRATION
    method = build_method(name, MethodOptions(steps=steps, backend=backend, device="cpu", model=model))
    stds, errors, per_image = [], [], []
    for path in files:
        hr, lr = hr_lr(path, scale)
        grid = Grid.whole(lr.shape[1], lr.shape[2], scale)
        runs = []
        for seed in sample_seeds(0, samples):
            runs.append(method(lr, grid, seed) * 255.0)
        runs = np.stack(runs)
        b = math.ceil(scale)
        std = metrics.crop_border(runs.std(axis=0, ddof=1), b).ravel()
        err = np.abs(metrics.crop_border(runs.mean(axis=0) - hr, b)).ravel()
        stds.append(std)
        errors.append(err)
        if std.std() > 0:
            per_image.append(float(np.corrcoef(std, err)[0, 1]))
    pooled = float(np.corrcoef(np.concatenate(stds), np.concatenate(errors))[0, 1])
    return {"method": label(name, steps), "samples": samples, "scale": scale, "pooled": pooled,
            "per_image_median": float(np.median(per_image)) if per_image else math.nan,
            "mean_std": float(np.mean(np.concatenate(stds)))}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def label(name: str, steps: int | None) -> str:
    return f"{name} ({steps} step{'s' if steps > 1 else ''})" if steps else name


def compare_picture(val: Path, crops_dir: Path, rows, out: Path) -> None:
    """LR, bicubic, regression, e2diffsr, lcmsr, HR for a few classes (×4, centre crops, 2× zoom)."""
    cols = [("LR", None)] + [(label(n, s), f"{n}-{s or 0}") for n, s in rows if (n, s) != ("lcmsr", 2) and "+" not in n] + [("HR", None)]
    zoom, pad, head = 2, 4, 18
    tile = CROP * zoom
    sheet = Image.new("RGB", (len(cols) * (tile + pad) + pad, len(COMPARE) * (tile + pad) + pad + head), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (title, _) in enumerate(cols):
        draw.text((pad + j * (tile + pad) + 2, 3), title, fill="black")
    for i, (cls, idx) in enumerate(COMPARE):
        stem = f"{cls}{idx:02d}"
        hr, lr = hr_lr(val / cls / f"{stem}.png", COMPARE_SCALE)
        y0, x0 = (hr.shape[1] - CROP) // 2 // 4 * 4, (hr.shape[2] - CROP) // 2 // 4 * 4
        for j, (title, key) in enumerate(cols):
            if title == "HR":
                img = hr
            elif title == "LR":
                img = np.repeat(np.repeat(quantise(lr), 4, axis=1), 4, axis=2)
            else:
                img = np.load(crops_dir / key / f"{stem}.npy")
            crop = img[:, y0:y0 + CROP, x0:x0 + CROP].transpose(1, 2, 0)
            pic = Image.fromarray(np.ascontiguousarray(crop)).resize((tile, tile), Image.NEAREST)
            sheet.paste(pic, (pad + j * (tile + pad), head + pad + i * (tile + pad)))
    sheet.save(out)


def report(results: dict, rows, scales, n_images: int, command: str, card: dict | None) -> str:
    lines = ["# Benchmarks", "", f"Command: `{command}`  ", f"Machine: {machine()}  ",
             f"Date: {datetime.date.today().isoformat()}  ",
             f"Data: {n_images} validation images of UC Merced (images 80–89 of each class), RGB 8-bit.", ""]
    if card:
        lines += [f"Model: `{card.get('name')}`, trained {json.dumps(card.get('training', {}).get('summary', card.get('training', {})))}", ""]
    lines += ["Protocol: LR = antialiased bicubic downsampling of HR; outputs quantised to 8 bits; PSNR/SSIM/ERGAS/SAM/HF "
              "ratio on RGB with a border crop of ceil(scale); consistency = PSNR of downsample(SR) against LR; "
              "HF ratio = spectral energy above a quarter of Nyquist, SR over HR; time per output megapixel of the "
              "method call on CPU (one 256² image at a time, all threads); peak RSS of the process running that method.", ""]
    for scale in scales:
        key = str(scale)
        base = results[label("bicubic", None)]["scales"][key]["psnr"]
        lines += [f"## ×{scale:g}", "", "| method | backend | PSNR | ΔPSNR vs bicubic | SSIM | ERGAS | SAM (°) | consistency PSNR | HF ratio | s / output MP | peak RSS (MB) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, steps in rows:
            r = results[label(name, steps)]
            m = r["scales"][key]
            lines.append(f"| {label(name, steps)} | {r['backend']} | {m['psnr']:.2f} | {m['psnr'] - base:+.2f} | {m['ssim']:.4f} | {m['ergas']:.3f} | "
                         f"{m['sam']:.3f} | {m['consistency_psnr']:.2f} | {m['hf_ratio']:.3f} | {m['s_per_mp']:.3f} | {r['peak_rss_mb']:.0f} |")
        lines.append("")
    lines += ["![LR, bicubic, regression, E²DiffSR, LCMSR and HR at ×4](compare.png)", ""]
    cal = results.get("calibration")
    if cal:
        lines += ["## Uncertainty calibration", "",
                  f"{cal['method']}, {cal['samples']} samples at ×{cal['scale']:g}: correlation between the per-pixel "
                  f"standard deviation of the samples and the absolute error of their mean against HR, pooled over all "
                  f"pixels of all images: **{cal['pooled']:.3f}** (median per image {cal['per_image_median']:.3f}; "
                  f"mean std {cal['mean_std']:.2f} DN).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench quality", description=__doc__.splitlines()[0])
    ap.add_argument("--val", required=True, type=Path)
    ap.add_argument("--out", default="docs/BENCHMARKS.md", type=Path)
    ap.add_argument("--model", help="model name or folder (default: the bundled default)")
    ap.add_argument("--per-class", type=int, help="images per class (default: all)")
    ap.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    ap.add_argument("--backend", default="auto", help="backend of the learned methods (default: auto, as users get)")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "STEPS", "CROPS"), help=argparse.SUPPRESS)
    ap.add_argument("--calibration-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = images(args.val, args.per_class)
    if args.calibration_worker:
        json.dump(calibration(files, args.model, args.backend), sys.stdout)
        return 0
    if args.worker:
        name, steps, crops = args.worker
        result = worker(name, int(steps) or None, files, args.scales, args.model, Path(crops), args.backend)
        json.dump(result, sys.stdout)
        return 0
    command = "make bench  # python -m training.bench quality " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in ROWS:
            crops = Path(tmp) / f"{name}-{steps or 0}"
            crops.mkdir()
            log.info("%s on %d images at ×%s", label(name, steps), len(files), ", ×".join(f"{s:g}" for s in args.scales))
            cmd = [sys.executable, "-m", "training.bench", "quality", "--val", str(args.val), "--scales", *map(str, args.scales),
                   "--backend", args.backend, "--worker", name, str(steps or 0), str(crops)]
            if args.per_class:
                cmd += ["--per-class", str(args.per_class)]
            if args.model:
                cmd += ["--model", args.model]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                log.error("%s failed: %s", label(name, steps), done.stderr.strip().splitlines()[-1:] or "")
                return 1
            results[label(name, steps)] = json.loads(done.stdout)
        log.info("uncertainty calibration")
        cmd = [sys.executable, "-m", "training.bench", "quality", "--val", str(args.val), "--backend", args.backend,
               "--calibration-worker"] + (["--per-class", str(args.per_class)] if args.per_class else []) + \
            (["--model", args.model] if args.model else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            log.error("calibration failed: %s", done.stderr.strip().splitlines()[-1:] or "")
            return 1
        results["calibration"] = json.loads(done.stdout)
        card = None
        try:
            from engine import modelfile
            card = modelfile.read_card(modelfile.resolve(args.model))
        except Exception:  # noqa: BLE001 - the table stands without the card's summary
            log.warning("no model card found for the report header")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if COMPARE_SCALE in args.scales and not args.per_class:
            compare_picture(args.val, Path(tmp), ROWS, args.out.parent / "compare.png")
    args.out.write_text(report(results, ROWS, args.scales, len(files), command, card), encoding="utf-8")
    log.info("wrote %s", args.out)
    return 0

