"""`make bench`: quality and speed of every method on a validation folder, written to docs/BENCHMARKS.md,
with the perception–distortion picture docs/pd.png and the comparison picture docs/compare.png.

Protocol: HR is the image cropped (top-left) so that HR = LR × scale exactly; LR is its
antialiased bicubic downsampling (engine.resample.downsample, the training degradation). Each
method sees LR/255 and its output is quantised to 8 bits, as a Byte GeoTIFF would be. PSNR, SSIM,
ERGAS, SAM, the HF ratio, LSD and the correctness shares are on RGB after cropping ceil(scale)
pixels at the border (engine.metrics.all_metrics); the consistency PSNR compares downsample(SR)
with LR. The diffusion rows also get the lattice figure (engine.metrics.lattice) of what they add to
the regression, SR − regression (both 8-bit), beside HR's own, HR − regression, on the same crop.
Each method runs in its own process, so its peak RSS is its own; time is the method call only, per
output megapixel.

At ×4 the diffusion methods also run at every detail of ``DETAILS``, and the two peers of
training/bench/peers.py (Real-ESRGAN x4plus, RealSR DF2K; ncnn on the CPU) when they are installed.
``--limit N`` runs on N images spread over all classes (every class in turn, image by image).
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
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine import metrics
from engine.evaluate import degraded_size
from engine.grid import Grid
from engine.methods import MethodOptions, build_method, card_default_detail
from engine.render import sample_seeds
from engine.projection import Projected
from engine.registry import BICUBIC, E2DIFFSR, LCMSR, REGRESSION, STOCHASTIC
from engine.resample import downsample

from . import peers, spectrum

log = logging.getLogger(__name__)


class Row(tuple):
    """One benchmarked result: (method, steps, detail); method is an engine method, "name+consistency",
    or "peer:K" (peers.PEERS[K]); detail None is the model card's default."""

    def __new__(cls, method: str, steps: int | None = None, detail: float | None = None):
        return super().__new__(cls, (method, steps, detail))

    method = property(lambda self: self[0])
    steps = property(lambda self: self[1])
    detail = property(lambda self: self[2])

    @property
    def peer(self) -> peers.Peer | None:
        return peers.PEERS[int(self.method.split(":")[1])] if self.method.startswith("peer:") else None

    @property
    def label(self) -> str:
        if self.peer:
            return self.peer.label
        parts = [f"{self.steps} step{'s' if self.steps > 1 else ''}"] if self.steps else []
        if self.detail is not None:
            parts.append(f"D = {self.detail:g}")
        return f"{self.method} ({', '.join(parts)})" if parts else self.method

    @property
    def key(self) -> str:
        """A file name for its comparison crops."""
        return f"{self.method.replace(':', '-')}-{self.steps or 0}-{'default' if self.detail is None else self.detail}"


ROWS = (Row(BICUBIC.name), Row(REGRESSION.name), Row(E2DIFFSR.name, 4), Row(LCMSR.name, 1), Row(LCMSR.name, 2),
        Row("regression+consistency"), Row("lcmsr+consistency", 1))  # at every scale; D: the card's default
DETAILS = (0.0, 0.25, 0.5, 0.75, 1.0)
SWEEP_METHODS = ((LCMSR.name, 1), (E2DIFFSR.name, 4))
SWEEP = tuple(Row(name, steps, d) for name, steps in SWEEP_METHODS for d in DETAILS)  # ×4 only
PEER_ROWS = tuple(Row(f"peer:{k}") for k in range(len(peers.PEERS)))  # ×4 only
PD_SCALE = 4.0
TARGET_GAIN = 1.0  # dB over bicubic that the default detail must keep at ×4 (issue 25)
REFINE_ROWS = 3  # rows per diffusion method that search the sweep's bracket of TARGET_GAIN (refine_detail)
REFINE_STEP = 0.01  # the resolution of that search, in D
# method, steps, samples, scale, detail of each diffusion method's uncertainty calibration
CALIBRATIONS = ((LCMSR.name, 1, 4, 4.0, 1.0), (E2DIFFSR.name, 4, 4, 4.0, 1.0))
SCALES = (2.0, 2.5, 3.0, 4.0)
COMPARE = (("buildings", 84), ("denseresidential", 81), ("harbor", 85), ("freeway", 83))
COMPARE_SCALE = 4.0
COMPARE_ROWS = (Row(BICUBIC.name), Row(REGRESSION.name), Row(LCMSR.name, 1), Row(LCMSR.name, 1, 1.0), Row(E2DIFFSR.name, 4, 1.0),
                *PEER_ROWS)
LATTICE_METHODS = STOCHASTIC  # the rows with a lattice figure (the sampling methods): what they add to the regression
SPECTRUM_ROW = Row(LCMSR.name, 1)  # the row (at the card's default D, every scale) whose spectra docs/spectrum.png draws
CROP = 64  # HR pixels of each crop in the comparison picture
LABEL_CHARS = 20  # a column label's line: the 2× zoomed crop is 128 px, 6 px a character


def images(folder: Path, per_class: int | None = None, limit: int | None = None) -> list[Path]:
    """The images of every class folder (at most ``per_class`` each); with ``limit``, that many spread
    over the classes: the first image of every class, then the second, and so on."""
    classes = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        found = sorted(f for f in cls.iterdir() if f.suffix.lower() in (".png", ".webp", ".tif", ".tiff"))
        classes.append(found[:per_class] if per_class else found)
    if not limit:
        return [f for found in classes for f in found]
    picked = []
    for k in range(max((len(c) for c in classes), default=0)):
        picked += [c[k] for c in classes if k < len(c)]
    return sorted(picked[:limit])


def hr_lr(path: Path, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """HR (uint8 C×H×W, cropped so H = h × scale exactly) and LR (float32 in 0..1)."""
    hr = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    h, w = degraded_size(hr.shape[1], scale), degraded_size(hr.shape[2], scale)
    hr = hr[:, :round(h * scale), :round(w * scale)]
    return hr, downsample(hr.astype(np.float32) / 255.0, h, w)


def quantise(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def build(row: Row, model: str | None, backend: str):
    """``(sr(lr, scale), backend name)`` for a row (a peer is ×4 only)."""
    if row.peer:
        net = peers.NcnnSR(row.peer)
        return (lambda lr, scale: net(lr)), "ncnn (CPU)"
    base_name, _, variant = row.method.partition("+")
    method = build_method(base_name, MethodOptions(steps=row.steps, backend=backend, device="cpu", model=model,
                                                   detail=row.detail))
    if variant == "consistency":
        method = Projected(method)
    nets = getattr(getattr(method, "inner", method), "nets", None)
    return (lambda lr, scale: method(lr, Grid.whole(lr.shape[1], lr.shape[2], scale))), \
        nets.backend if nets is not None else "numpy"


def added_details(sr: np.ndarray, hr: np.ndarray, regression: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """SR − regression and HR − regression on the border crop of ceil(scale): what a diffusion row adds,
    and what HR adds, to the regression; the images in the same units."""
    b = math.ceil(scale)
    reg = metrics.crop_border(regression, b)
    return metrics.crop_border(sr, b) - reg, metrics.crop_border(hr, b) - reg


def lattice_figures(details: tuple[np.ndarray, np.ndarray], scale: float) -> dict[str, float]:
    """The lattice figures (engine.metrics.lattice, dB) of ``added_details``' SR − regression and HR − regression."""
    return {"lattice": metrics.lattice(details[0], scale), "lattice_hr": metrics.lattice(details[1], scale)}


def worker(row: Row, files: list[Path], scales, model: str | None, crops_dir: Path, backend: str, val: Path) -> dict:
    """Metrics (means over images) and timing of one row at each scale, its peak RSS, and its crops of
    the comparison images at ×4. A diffusion row also runs the regression (untimed) for the lattice
    figures of its added detail and of HR's (``added_details``, ``lattice_figures``; their mean in dB over the images) and
    their mean spectra (training.bench.spectrum), under "spectra"."""
    run, backend_name = build(row, model, backend)
    regression = build(Row(REGRESSION.name), model, backend)[0] if row.method.split("+")[0] in LATTICE_METHODS else None
    out = {"scales": {}, "backend": backend_name}
    for scale in scales:
        sums, seconds, pixels = {}, 0.0, 0
        spectra = {"sr": spectrum.MeanSpectrum(), "hr": spectrum.MeanSpectrum()}
        for path in files:
            hr, lr = hr_lr(path, scale)
            start = time.perf_counter()
            sr = run(lr, scale)
            seconds += time.perf_counter() - start
            pixels += sr.shape[1] * sr.shape[2]
            sr8, hr64 = quantise(sr).astype(np.float64), hr.astype(np.float64)
            m = metrics.all_metrics(sr8, hr64, lr * 255.0, scale, 255.0)
            if regression is not None:
                details = added_details(sr8, hr64, quantise(regression(lr, scale)).astype(np.float64), scale)
                for key, detail in zip(("sr", "hr"), details):
                    spectra[key].add(detail)
                m.update(lattice_figures(details, scale))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
        row_metrics = {k: v / len(files) for k, v in sums.items()}
        if not math.isfinite(row_metrics["consistency_psnr"]):
            row_metrics["consistency_psnr"] = math.inf
        row_metrics["s_per_mp"] = seconds / (pixels / 1e6)
        out["scales"][str(scale)] = row_metrics
        if regression is not None and spectra["sr"].count and spectra["hr"].count:
            out.setdefault("spectra", {})[str(scale)] = {k: v.result() for k, v in spectra.items()}
    if COMPARE_SCALE in scales:
        for cls, idx in COMPARE:
            path = val / cls / f"{cls}{idx:02d}.png"
            if path.is_file():
                np.save(crops_dir / f"{path.stem}.npy", quantise(run(hr_lr(path, COMPARE_SCALE)[1], COMPARE_SCALE)))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def calibration(files: list[Path], model: str | None, backend: str, method_name: str) -> dict:
    """Pearson correlation, pooled over all pixels of all images, between the per-pixel std of K
    samples of ``method_name`` (its entry of CALIBRATIONS) and the absolute error of their mean
    against HR (8-bit units)."""
    name, steps, samples, scale, detail = next(entry for entry in CALIBRATIONS if entry[0] == method_name)
    method = build_method(name, MethodOptions(steps=steps, backend=backend, device="cpu", model=model, detail=detail))
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
    return {"method": Row(name, steps, detail).label, "samples": samples, "scale": scale, "pooled": pooled,
            "per_image_median": float(np.median(per_image)) if per_image else math.nan,
            "mean_std": float(np.mean(np.concatenate(stds)))}


def machine() -> str:
    from training.trainer import cpu_name

    cpu = cpu_name()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def compare_picture(val: Path, crops_dir: Path, rows, out: Path, default_detail: dict[str, float]) -> None:
    """LR, the rows' results and HR for a few classes (×4, centre crops, 2× zoom)."""
    def title(row):
        if row.detail is None and row.method in default_detail:
            return row.label[:-1] + f", D = {default_detail[row.method]:g} default)"
        return row.label

    def shown(row):  # a default that is D = 1 would repeat the D = 1 column
        same = row.detail is None and default_detail.get(row.method) == 1.0 and Row(row.method, row.steps, 1.0) in rows
        return (crops_dir / row.key).is_dir() and not same

    cols = [("LR", None)] + [(title(row), row.key) for row in rows if shown(row)] + [("HR", None)]
    zoom, pad = 2, 4
    tile = CROP * zoom
    labels = [textwrap.fill(title, LABEL_CHARS) for title, _ in cols]
    head = 12 * max(label.count("\n") + 1 for label in labels) + 6
    sheet = Image.new("RGB", (len(cols) * (tile + pad) + pad, len(COMPARE) * (tile + pad) + pad + head), "white")
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(labels):
        draw.multiline_text((pad + j * (tile + pad) + 2, 2), label, fill="black", spacing=1)
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


def pd_points(results: dict, sweep, peer_rows) -> list[tuple[str, list[tuple[float, float, str]]]]:
    """The perception–distortion picture's series at ×4: (name, [(LSD, ΔPSNR, point label)])."""
    key = str(PD_SCALE)
    base = results[Row(BICUBIC.name).label]["scales"][key]["psnr"]

    def point(row, text=""):
        m = results[row.label]["scales"][key]
        return m["lsd"], m["psnr"] - base, text

    series = [(BICUBIC.name, [point(Row(BICUBIC.name))]), (REGRESSION.name, [point(Row(REGRESSION.name))])]
    for name, steps in ((LCMSR.name, 1), (E2DIFFSR.name, 4)):
        rows = [r for r in sweep if (r.method, r.steps) == (name, steps) and r.label in results]
        if rows:
            series.append((Row(name, steps).label, [point(r, f"{r.detail:g}") for r in rows]))
    series += [(r.label, [point(r)]) for r in peer_rows if r.label in results]
    return series


def pd_picture(series, out: Path) -> None:
    """ΔPSNR against bicubic (up: more faithful) over LSD (left: closer to HR's spectrum), with matplotlib;
    an inset magnifies our learned methods when they lie close together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    ours = [(name, points) for name, points in series if name != BICUBIC.name and not any(
        name == p.label for p in peers.PEERS)]
    xs_ours = [x for _, points in ours for x, _, _ in points]
    ys_ours = [y for _, points in ours for _, y, _ in points]
    axes = [ax]
    if xs_ours and max(xs_ours) - min(xs_ours) < 2.0:
        inset = ax.inset_axes([0.33, 0.1, 0.4, 0.45])
        pad_x = max(0.05, 0.15 * (max(xs_ours) - min(xs_ours)))
        pad_y = max(0.02, 0.15 * (max(ys_ours) - min(ys_ours)))
        inset.set_xlim(min(xs_ours) - pad_x, max(xs_ours) + pad_x)
        inset.set_ylim(min(ys_ours) - pad_y, max(ys_ours) + pad_y)
        inset.tick_params(labelsize=7)
        inset.grid(alpha=0.3)
        ax.indicate_inset_zoom(inset, edgecolor="grey")
        axes.append(inset)
    for k, (name, points) in enumerate(series):
        xs, ys, texts = zip(*points)
        for a in axes:
            a.plot(xs, ys, marker="osD^v<>ph*"[k % 10], color=f"C{k}", linestyle="-" if len(points) > 1 else "none",
                   label=name if a is ax else None)
        labelled = axes[-1] if name in dict(ours) else ax
        for i, (x, y, text) in enumerate(points):
            if text and i in (0, len(points) - 1):
                labelled.annotate(f"D={text}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xlabel("LSD to HR (dB; lower: closer to HR's spectrum)")
    ax.set_ylabel("ΔPSNR vs our bicubic (dB; higher: more faithful)")
    ax.set_title(f"Perception–distortion on UC Merced val, ×{PD_SCALE:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def refine_detail(results: dict, sweep, method: str) -> float | None:
    """The next detail at which to run ``method`` so that its suggested detail (``suggested_detail``)
    is found between the sweep's coarse steps: the sweep's rows of the method at ×4 bracket
    TARGET_GAIN between the largest D that keeps it and the smallest larger D that does not, and the
    next D is where the straight line between those two ΔPSNRs crosses TARGET_GAIN (regula falsi),
    rounded to REFINE_STEP and strictly inside the bracket. None when there is no bracket (every D
    keeps the gain or none does) or no step of REFINE_STEP left inside it."""
    key = str(PD_SCALE)
    base = results[Row(BICUBIC.name).label]["scales"][key]["psnr"]
    gains = sorted((r.detail, results[r.label]["scales"][key]["psnr"] - base)
                   for r in sweep if r.method == method and r.detail is not None and r.label in results)
    kept = [(d, g) for d, g in gains if g >= TARGET_GAIN]
    if not kept:
        return None
    lo, g_lo = max(kept)
    above = [(d, g) for d, g in gains if d > lo]
    if not above:
        return None
    hi, g_hi = min(above)
    d = lo + (hi - lo) * (g_lo - TARGET_GAIN) / (g_lo - g_hi)  # g_lo ≥ TARGET_GAIN > g_hi
    steps_lo, steps_hi = round(lo / REFINE_STEP), round(hi / REFINE_STEP)
    k = min(max(round(d / REFINE_STEP), steps_lo + 1), steps_hi - 1)
    return round(k * REFINE_STEP, 6) if steps_lo < k < steps_hi else None


def suggested_detail(results: dict, sweep, method: str) -> float | None:
    """The detail of ``method`` (lcmsr or e2diffsr, at the sweep's steps) with the lowest LSD that keeps
    ΔPSNR ≥ TARGET_GAIN at ×4 (the most faithful one when none does)."""
    key = str(PD_SCALE)
    base = results[Row(BICUBIC.name).label]["scales"][key]["psnr"]
    rows = [r for r in sweep if r.method == method and r.label in results]
    if not rows:
        return None
    scored = [(results[r.label]["scales"][key], r.detail) for r in rows]
    good = [(m["lsd"], d) for m, d in scored if m["psnr"] - base >= TARGET_GAIN]
    return min(good)[1] if good else min(d for _, d in scored)


def set_default_detail(results: dict, sweep, model: str | None) -> None:
    """Write the sweep's suggested detail of each diffusion method into the model card's detail_default."""
    from engine import modelfile
    from engine.card import parse

    folder = modelfile.resolve(model)
    card = modelfile.read_card(folder)
    written = card.to_json()
    for name in (LCMSR.name, E2DIFFSR.name):
        suggestion = suggested_detail(results, sweep, name)
        if suggestion is not None and name in card.methods:
            written["methods"][name]["detail_default"] = suggestion
            log.info("%s: detail_default %g written to %s", name, suggestion, folder / "model.json")
    modelfile.write_card(folder, parse(written))


def card_metrics(results: dict, scales, n_images: int, command: str) -> dict:
    """The card's ``metrics``: this run's PSNR, ΔPSNR over bicubic and LSD of every row at each scale it
    ran (the ×4 detail sweep and the peers included), and the uncertainty calibration."""
    rows = {}
    for label, result in results.items():
        if label == "calibration":  # a list, one per method
            continue
        for key, m in result["scales"].items():
            base = results[Row(BICUBIC.name).label]["scales"].get(key)
            rows.setdefault(f"x{float(key):g}", {})[label] = {
                "psnr_db": round(m["psnr"], 2), "lsd_db": round(m["lsd"], 2),
                **({} if base is None else {"delta_psnr_db": round(m["psnr"] - base["psnr"], 2)}),
                **({"lattice_db": round(m["lattice"], 1), "hr_lattice_db": round(m["lattice_hr"], 1)}
                   if "lattice" in m and math.isfinite(m["lattice"]) else {})}
    cal = results.get("calibration", [])
    return {"protocol": f"docs/BENCHMARKS.md: {n_images} UC Merced val images, LR = antialiased bicubic, 8-bit outputs, "
                        "border crop ceil(s); LSD in dB (lower is closer to HR's spectrum)",
            "command": command, "date": time.strftime("%Y-%m-%d"), "by_scale": rows,
            **({"uncertainty_calibration": [{k: c[k] for k in ("method", "samples", "scale", "pooled", "mean_std")}
                                            for c in cal]} if cal else {})}


def write_card_metrics(metrics_: dict, model: str | None) -> None:
    from engine import modelfile

    folder = modelfile.resolve(model)
    modelfile.write_card(folder, modelfile.read_card(folder).updated(metrics=metrics_))
    log.info("metrics written to %s", folder / "model.json")


def fmt_db(v: float) -> str:
    """A lattice figure: NaN (no added detail, e.g. D = 0) as —."""
    return "—" if math.isnan(v) else f"{v:.1f}"


def fmt_share(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{100 * v:.0f}"


def report(results: dict, scales, n_images: int, limit: int | None, command: str, card: dict | None,
           skipped: str | None, default_detail: dict[str, float], pictures: dict, sweep) -> str:
    data = (f"{n_images} validation images of UC Merced (images 80–89 of each class"
            + (f"; --limit {limit}: the first {n_images} taken class by class, so every class is in" if limit else "")
            + "), RGB 8-bit.")
    lines = ["# Benchmarks", "", f"Command: `{command}`  ", f"Machine: {machine()}  ",
             f"Date: {datetime.date.today().isoformat()}  ", f"Data: {data}", ""]
    if card:
        trained = card.training["summary"] if "summary" in card.training else card.training
        lines += [f"Model: `{card.name}`, trained {json.dumps(trained)}", ""]
    lines += ["Protocol: LR = antialiased bicubic downsampling of HR; outputs quantised to 8 bits; every metric but the "
              "consistency on RGB with a border crop of ceil(scale); consistency = PSNR of downsample(SR) against LR; "
              "HF ratio = spectral energy above a quarter of Nyquist, SR over HR; LSD = log-spectral distance to HR "
              "(docs/MODELS.md: band-mean image, 24 radial bins of 0.125–0.5 cycles/pixel, dB; lower is closer to "
              "HR's spectrum); improv./omiss./halluc. = the shares (%) of the classified pixels in ESA opensr-test's "
              "correctness classes with the L1 distance (docs/MODELS.md); time per output megapixel of the method call on "
              "CPU (one image at a time, all threads); peak RSS of the process running that method.", ""]
    lines += ["The diffusion rows without a D ran at "
              + ", ".join(f"{name} D = {d:g}" for name, d in default_detail.items())
              + " (the model card's detail_default when it has one, else the fallback in engine/registry/).", ""]
    lines += ["Lattice (dB): the power of the detail a diffusion row adds to the regression (SR − regression, band "
              "mean) at the LR pixel frequency 1/scale and its harmonics up to 0.5 cycles/pixel, on both axes, against "
              "the frequency bins 2–6 away from them (engine.metrics.lattice; 0 dB: no peak), the mean over the images; "
              "in brackets HR's own, HR − regression. Above HR's figure, the added detail is locked to the LR pixels.", ""]
    if pictures.get("spectrum"):
        lines += ["The spectra behind the figure (training/bench/spectrum.py): the mean over the images of the power "
                  "the lattice figure reads, per frequency from 0.125 cycles/pixel to Nyquist, each image's divided by "
                  "its mean; the harmonics dashed, their adjacent bins shaded. A narrow peak at a dashed line is a "
                  "lattice; a spectrum that falls or rises steeply across it moves the figure without one.", "",
                  f"![The added detail's and HR's spectra of {SPECTRUM_ROW.label}](spectrum.png)", ""]
    heading = ("| method | backend | PSNR | ΔPSNR vs bicubic | SSIM | ERGAS | SAM (°) | consistency PSNR | HF ratio | LSD (dB) "
               "| lattice (dB) (HR's) | improv. % | omiss. % | halluc. % | s / output MP | peak RSS (MB) |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

    def line(row, r, m, base):
        grid = f"{fmt_db(m['lattice'])} ({fmt_db(m['lattice_hr'])})" if "lattice" in m else "—"
        return (f"| {row.label} | {r['backend']} | {m['psnr']:.2f} | {m['psnr'] - base:+.2f} | {m['ssim']:.4f} | "
                f"{m['ergas']:.3f} | {m['sam']:.3f} | {m['consistency_psnr']:.2f} | {m['hf_ratio']:.3f} | {m['lsd']:.2f} | "
                f"{grid} | "
                f"{fmt_share(m['improvement'])} | {fmt_share(m['omission'])} | {fmt_share(m['hallucination'])} | "
                f"{m['s_per_mp']:.3f} | {r['peak_rss_mb']:.0f} |")

    for scale in scales:
        key = str(scale)
        base = results[Row(BICUBIC.name).label]["scales"][key]["psnr"]
        lines += [f"## ×{scale:g}", "", heading, rule]
        for row in ROWS:
            r = results[row.label]
            lines.append(line(row, r, r["scales"][key], base))
        lines.append("")
    key = str(PD_SCALE)
    if key in results[Row(BICUBIC.name).label]["scales"]:
        base = results[Row(BICUBIC.name).label]["scales"][key]["psnr"]
        lines += [f"## Faithful ↔ detailed at ×{PD_SCALE:g}", "",
                  "The diffusion methods at detail D = 0 (the regression latent: deterministic), 0.25, 0.5, 0.75 and 1 "
                  f"(a full sample), at up to {REFINE_ROWS} more D each where the search for the default ran "
                  f"(between the steps that bracket +{TARGET_GAIN:g} dB, to {REFINE_STEP:g}), and two GAN peers run on "
                  "the CPU with ncnn (training/bench/peers.py).", "",
                  heading, rule]
        for row in (Row(BICUBIC.name), Row(REGRESSION.name), *sweep, *PEER_ROWS):
            if row.label in results:
                r = results[row.label]
                lines.append(line(row, r, r["scales"][key], base))
        lines.append("")
        if skipped:
            lines += [f"The peers were skipped: {skipped}.", ""]
        for name in (LCMSR.name, E2DIFFSR.name):
            suggestion = suggested_detail(results, sweep, name)
            if suggestion is not None:
                lines += [f"{name}: the lowest LSD with ΔPSNR ≥ +{TARGET_GAIN:g} dB over bicubic is at D = {suggestion:g} "
                          f"(this run's default: {default_detail[name]:g}).", ""]
        if pictures.get("pd"):
            lines += ["![ΔPSNR against LSD at ×4](pd.png)", ""]
    if pictures.get("compare"):
        lines += ["![LR, bicubic, regression, LCMSR at the default D and at D = 1, E²DiffSR at D = 1, the peers and HR at ×4]"
                  "(compare.png)", ""]
    if results.get("calibration"):
        lines += calibration_lines(results["calibration"])
    return "\n".join(lines)


def calibration_lines(cal: list[dict]) -> list[str]:
    """The report's section of the calibrations (``calibration``'s results), a paragraph per method."""
    lines = ["## Uncertainty calibration", ""]
    for c in cal:
        lines += [f"{c['method']}, {c['samples']} samples at ×{c['scale']:g}: correlation between the per-pixel "
                  f"standard deviation of the samples and the absolute error of their mean against HR, pooled over "
                  f"all pixels of all images: **{c['pooled']:.3f}** (median per image {c['per_image_median']:.3f}; "
                  f"mean std {c['mean_std']:.2f} DN).", ""]
    return lines


def parse_row(method: str, steps: str, detail: str) -> Row:
    return Row(method, int(steps) or None, None if detail == "-" else float(detail))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench quality", description=__doc__.splitlines()[0])
    ap.add_argument("--val", required=True, type=Path)
    ap.add_argument("--out", default="docs/BENCHMARKS.md", type=Path)
    ap.add_argument("--model", help="model name or folder (default: the bundled default)")
    ap.add_argument("--per-class", type=int, help="images per class (default: all)")
    ap.add_argument("--limit", type=int, help="at most this many images, spread over all classes (default: all)")
    ap.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    ap.add_argument("--backend", default="auto", help="backend of the learned methods (default: auto, as users get)")
    ap.add_argument("--set-default", action="store_true",
                    help="write each diffusion method's suggested detail (from the ×4 sweep, so only with ×4 among "
                         "--scales) into the model card as its detail_default before the default rows run, and this "
                         "run's measures into the card's metrics at the end")
    ap.add_argument("--worker", nargs=4, metavar=("METHOD", "STEPS", "DETAIL", "CROPS"), help=argparse.SUPPRESS)
    ap.add_argument("--calibration-worker", choices=[entry[0] for entry in CALIBRATIONS], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = images(args.val, args.per_class, args.limit)
    if args.calibration_worker:
        json.dump(calibration(files, args.model, args.backend, args.calibration_worker), sys.stdout)
        return 0
    if args.worker:
        *row, crops = args.worker
        result = worker(parse_row(*row), files, args.scales, args.model, Path(crops), args.backend, args.val)
        json.dump(result, sys.stdout)
        return 0
    command = "make bench  # python -m training.bench quality " + " ".join(argv if argv is not None else sys.argv[1:])
    common = ["--val", str(args.val), "--backend", args.backend]
    common += ["--per-class", str(args.per_class)] if args.per_class else []
    common += ["--limit", str(args.limit)] if args.limit else []
    common += ["--model", args.model] if args.model else []
    skipped = peers.missing()
    # bicubic and the ×4 sweep first: --set-default picks the default detail from them before the default rows run
    first = [(ROWS[0], args.scales)]
    if PD_SCALE in args.scales:
        first += [(row, [PD_SCALE]) for row in SWEEP]
        if skipped:
            log.warning("the peers are skipped: %s", skipped)
        else:
            first += [(row, [PD_SCALE]) for row in PEER_ROWS]
    results = {}
    sweep = list(SWEEP)
    with tempfile.TemporaryDirectory() as tmp:

        def run_row(row: Row, scales) -> bool:
            crops = Path(tmp) / row.key
            crops.mkdir()
            log.info("%s on %d images at ×%s", row.label, len(files), ", ×".join(f"{s:g}" for s in scales))
            cmd = [sys.executable, "-m", "training.bench", "quality", *common, "--scales", *map(str, scales),
                   "--worker", row.method, str(row.steps or 0), "-" if row.detail is None else str(row.detail), str(crops)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                log.error("%s failed: %s", row.label, done.stderr.strip().splitlines()[-1:] or "")
                return False
            results[row.label] = json.loads(done.stdout)
            return True

        for row, scales in first:
            if not run_row(row, scales):
                return 1
        if PD_SCALE in args.scales:  # the default's search between the sweep's steps
            for name, steps in SWEEP_METHODS:
                for _ in range(REFINE_ROWS):
                    detail = refine_detail(results, sweep, name)
                    if detail is None:
                        break
                    sweep.append(Row(name, steps, detail))
                    if not run_row(sweep[-1], [PD_SCALE]):
                        return 1
            sweep.sort(key=lambda r: (SWEEP_METHODS.index((r.method, r.steps)), r.detail))
            if args.set_default:
                set_default_detail(results, sweep, args.model)
        for row in ROWS[1:]:
            if not run_row(row, args.scales):
                return 1
        results["calibration"] = []
        for name, *_ in CALIBRATIONS:
            log.info("uncertainty calibration of %s", name)
            done = subprocess.run([sys.executable, "-m", "training.bench", "quality", *common, "--calibration-worker", name],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                log.error("calibration of %s failed: %s", name, done.stderr.strip().splitlines()[-1:] or "")
                return 1
            results["calibration"].append(json.loads(done.stdout))
        card = None
        try:
            from engine import modelfile
            card = modelfile.read_card(modelfile.resolve(args.model))
        except Exception:  # noqa: BLE001 - the table stands without the card's summary
            log.warning("no model card found for the report header")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pictures = {}
        default_detail = {name: card_default_detail(name, args.model) for name in (LCMSR.name, E2DIFFSR.name)}
        if COMPARE_SCALE in args.scales:
            compare_picture(args.val, Path(tmp), COMPARE_ROWS, args.out.parent / "compare.png", default_detail)
            pictures["compare"] = True
            pd_picture(pd_points(results, sweep, PEER_ROWS), args.out.parent / "pd.png")
            pictures["pd"] = True
        spectra = results.get(SPECTRUM_ROW.label, {}).get("spectra")
        if spectra:
            spectrum.picture({float(k): v for k, v in spectra.items()}, args.out.parent / "spectrum.png",
                             f"{SPECTRUM_ROW.label} at D = {default_detail[SPECTRUM_ROW.method]:g}: mean spectrum of "
                             f"the added detail and of HR's, {len(files)} val images")
            pictures["spectrum"] = True
    if args.set_default:
        write_card_metrics(card_metrics(results, args.scales, len(files), command), args.model)
    args.out.write_text(report(results, args.scales, len(files), args.limit, command, card, skipped, default_detail,
                               pictures, sweep), encoding="utf-8")
    log.info("wrote %s", args.out)
    return 0
