"""Evaluation of super-resolution against a reference, in two modes. Shared by the CLI
(``python -m engine evaluate``) and the Processing algorithm ``latentsr:evaluate``.

**Reference mode** (an SR raster is given): the SR raster is compared with the reference HR raster
on the same pixel grid (the same width and height; bands matched in order). The LR for the
consistency PSNR is the LR raster when one is given, else the reference degraded to
round(HR size / scale) by the training degradation (engine.resample.downsample), else nothing.

**Degradation mode** (no SR raster): the reference is cropped top-left to a size that is exactly
LR × scale when such an LR size exists (else round(LR × scale)), degraded to that LR, written to a
temporary GeoTIFF with the matching geotransform, super-resolved by the chosen method through the
normal pipeline, and by bicubic for comparison; both are scored against the cropped reference.

Conventions:
- Values are compared as stored (no band scale/offset). ``data_range`` is 255 for a Byte
  reference, else the reference's valid max − min over the selected bands (1 if it is constant).
- PSNR, SSIM, ERGAS, SAM and the HF ratio use a border crop of ceil(scale) pixels, as
  engine.metrics.all_metrics; the consistency PSNR uses the whole SR.
- A pixel of a band counts when it is valid (not nodata, finite) in both rasters. PSNR and ERGAS
  use only those pixels, SAM only pixels valid in every band, the consistency PSNR only LR pixels
  whose centre falls on such a pixel (and that are valid in a given LR). SSIM and the HF ratio need
  whole images: they run on the full crop with the excluded pixels set, in both rasters, to the
  reference band's valid mean, so those pixels add no difference.
- Overall values: PSNR from the pooled squared error of all bands; SSIM the mean of the bands;
  ERGAS Wald's over the bands; the HF ratio the ratio of energies summed over the bands; SAM needs
  at least two bands. Without a scale (no SCALE and no LR) ERGAS and the consistency PSNR are not
  available and no border is cropped. A metric that is not available is NaN.
- Values so large that their differences or squares would overflow (beyond ±2^100) are scored
  scaled down by a common power of two, which is exact and changes no metric; a note says so.
- The lattice figure (engine.metrics.lattice, dB), for the first result only (the SR raster, or the
  method): what the result adds to a baseline, SR − baseline, at the LR pixel frequency 1/scale and
  its harmonics against the adjacent frequency bins, and beside it (``lattice_hr``) the reference's
  own, HR − baseline, per band and overall (the band mean). The baseline is the regression of the
  same model, run on the same LR, in degradation mode with a diffusion method (lcmsr, e2diffsr: one
  more run, not a row of the report); everywhere else the bicubic of the LR on the SR's grid
  (engine.resample.cubic_upsample of the LR raster, or of the reference degraded by the scale), since
  a given SR raster comes without its regression. Excluded pixels take the fill of SSIM's. Without
  a scale or an LR, below ×2 (the LR pixel frequency above 0.5 cycles/pixel), and for the other rows
  it is NaN.
- Whole rasters are read into memory: each raster may hold at most ``MAX_VALUES`` values
  (bands × width × height); at that limit an evaluation peaks at about 3 GB of memory.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
from osgeo import gdal

from . import guard, metrics, output, raster
from .errors import Cancelled, LatentSRError
from .grid import output_size
from .methods import RunOptions
from .pipeline import Request, check_scale, superresolve
from .registry import BICUBIC, REGRESSION, STOCHASTIC
from .render import to_storage
from .report import Report, Scores, render_html
from .resample import cubic_upsample, downsample, nearest_indices

log = logging.getLogger(__name__)

MAX_VALUES = 40_000_000
LATTICE_REGRESSION = STOCHASTIC  # degradation mode: the sampling methods' lattice is measured against the regression
SSIM_WINDOW = 11  # metrics.ssim's Gaussian window needs this many pixels a side
IDENTITY = raster.BandNorm(0.0, 1.0, 0.0)


@dataclass
class EvaluateRequest:
    """What an evaluation needs; the same fields as the CLI flags and the Processing parameters."""

    reference: str
    sr: str | None = None  # None: degradation mode
    lr: str | None = None
    scale: float | None = None
    bands: Sequence[int] | None = None
    options: RunOptions = RunOptions()  # degradation mode only: how the reference's LR is super-resolved
    html: str | None = None
    difference: str | None = None
    correctness: str | None = None  # the per-pixel correctness class (Byte GeoTIFF)


@dataclass
class Loaded:
    """The selected bands of a raster read whole, with their validity."""

    ds: object
    info: raster.RasterInfo
    data: np.ndarray  # float64 C×H×W as stored
    valid: np.ndarray  # bool C×H×W


def load(path: str, bands: Sequence[int] | None, role: str) -> Loaded:
    ds = raster.open_raster(path)
    info = raster.describe(ds, list(bands) if bands else None)
    values = len(info.bands) * info.width * info.height
    if values > MAX_VALUES:
        raise LatentSRError(f"the {role} has {len(info.bands)}×{info.width}×{info.height} = {values:,} values; evaluate "
                            f"reads whole rasters and accepts at most {MAX_VALUES:,}: clip it or select fewer bands")
    stored = raster.read_window(ds, info, 0, 0, info.width, info.height)
    valid = raster.read_valid(ds, info, stored)
    return Loaded(ds, info, stored.astype(np.float64), valid)


def data_range(ref: Loaded, valid: np.ndarray) -> float:
    """255 for Byte; else the reference's valid max − min over the selected bands (1 if constant)."""
    if ref.info.dtype == np.uint8:
        return 255.0
    values = ref.data[valid]
    span = float(values.max() - values.min())
    return span if span > 0 else 1.0


def joint_fill(sr: np.ndarray, hr: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays with the pixels outside ``valid`` set to the reference band's valid mean."""
    fill = np.array([hr[c][valid[c]].mean() for c in range(hr.shape[0])])[:, None, None]
    return np.where(valid, sr, fill), np.where(valid, hr, fill)


def lr_validity(valid: np.ndarray, lr_h: int, lr_w: int) -> np.ndarray:
    """For each LR pixel, whether the HR pixel under its centre is valid (C×lr_h×lr_w)."""
    h, w = valid.shape[1:]
    ys = nearest_indices((np.arange(lr_h) + 0.5) * h / lr_h - 0.5, h)
    xs = nearest_indices((np.arange(lr_w) + 0.5) * w / lr_w - 0.5, w)
    return valid[:, ys][:, :, xs]


def check_crop(width: int, height: int, scale: float | None) -> None:
    border = math.ceil(scale) if scale else 0
    if min(width, height) <= 2 * border:
        raise LatentSRError(f"the rasters ({width}×{height}) are too small for a border crop of {border} pixels "
                            f"at scale {scale:g}")


def baseline_fill(base: np.ndarray, hr: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The lattice baseline with the pixels outside ``valid`` set as joint_fill sets SR and HR (``hr`` unfilled)."""
    fill = np.array([hr[c][valid[c]].mean() for c in range(hr.shape[0])])[:, None, None]
    return np.where(valid, base, fill)


def score(label: str, sr: np.ndarray, hr: np.ndarray, valid: np.ndarray, lr: np.ndarray | None,
          lr_valid: np.ndarray | None, scale: float | None, drange: float, base: np.ndarray | None = None) -> Scores:
    """The metrics of ``sr`` against ``hr`` (both filled, C×H×W float64; see the module notes); the
    lattice figures against ``base`` (filled likewise) when it is given."""
    n = sr.shape[0]
    s, h, v = (metrics.crop_border(a, math.ceil(scale) if scale else 0) for a in (sr, hr, valid))
    b = metrics.crop_border(base, math.ceil(scale)) if base is not None and scale else None
    if not v.any(axis=(1, 2)).all():
        raise LatentSRError("a band has no pixel that is valid in both rasters (after the border crop)")
    with_ssim = min(s.shape[-2:]) >= SSIM_WINDOW
    down = downsample(sr, lr.shape[-2], lr.shape[-1]) if lr is not None else None
    bands = []
    for c in range(n):
        row = {"psnr": metrics.psnr(s[c][v[c]], h[c][v[c]], drange),
               "ssim": metrics.ssim(s[c:c + 1], h[c:c + 1], drange) if with_ssim else math.nan,
               "ergas": metrics.ergas(s[c][v[c]][None], h[c][v[c]][None], scale) if scale else math.nan,
               "sam": math.nan,
               "consistency_psnr": math.nan,
               "hf_ratio": metrics.hf_ratio(s[c], h[c])}
        if down is not None and lr_valid[c].any():
            row["consistency_psnr"] = metrics.psnr(down[c][lr_valid[c]], lr[c][lr_valid[c]], drange)
        row["lsd"] = metrics.lsd(s[c], h[c])
        row.update(lattice_pair(s[c], h[c], None if b is None else b[c], scale))
        row.update(dict.fromkeys(metrics.CLASSES, math.nan))
        bands.append(row)
    every = v.all(axis=0)
    overall = {"psnr": metrics.psnr(s[v], h[v], drange),
               "ssim": float(np.mean([b["ssim"] for b in bands])),
               "ergas": math.sqrt(np.mean([b["ergas"] ** 2 for b in bands])),
               "sam": metrics.sam(s[:, every], h[:, every]) if n >= 2 and every.any() else math.nan,
               "consistency_psnr": math.nan,
               "hf_ratio": metrics.hf_ratio(s, h)}
    if down is not None and lr_valid.any():
        overall["consistency_psnr"] = metrics.psnr(down[lr_valid], lr[lr_valid], drange)
    overall["lsd"] = metrics.lsd(s, h)
    overall.update(lattice_pair(s, h, b, scale))
    classes = None
    if lr is not None:
        border = math.ceil(scale)
        inner = np.zeros(valid.shape[1:], bool)
        inner[border:valid.shape[1] - border, border:valid.shape[2] - border] = True
        classes = metrics.correctness_map(sr, hr, cubic_upsample(lr, *hr.shape[1:]), valid.all(axis=0) & inner)
    overall.update(metrics.correctness_shares(classes) if classes is not None else dict.fromkeys(metrics.CLASSES, math.nan))
    return Scores(label, bands, overall, classes)


def lattice_pair(sr: np.ndarray, hr: np.ndarray, base: np.ndarray | None, scale: float | None) -> dict[str, float]:
    """The lattice figures of SR − base and HR − base (module notes); NaN without a base."""
    if base is None:
        return {"lattice": math.nan, "lattice_hr": math.nan}
    return {"lattice": metrics.lattice(sr - base, scale), "lattice_hr": metrics.lattice(hr - base, scale)}


def evaluate(req: EvaluateRequest, progress: Callable[[float], None] | None = None,
             is_cancelled: Callable[[], bool] | None = None) -> Report:
    """Run ``req``: reference mode when ``req.sr`` is given, else degradation mode. Writes the HTML
    report and the difference raster when asked."""
    progress = progress or (lambda f: None)
    is_cancelled = is_cancelled or (lambda: False)
    if req.scale is not None:
        check_scale(req.scale)
    if req.correctness and req.sr and req.scale is None and not req.lr:
        raise LatentSRError("the correctness raster compares the SR with the LR: give a scale or an LR raster")
    guard.check_outputs({"HTML report": req.html, "difference raster": req.difference,
                          "correctness raster": req.correctness},
                         {"reference": (req.reference, None), "SR raster": (req.sr, None), "LR raster": (req.lr, None)})
    guard.check_tif_name(req.difference, "difference raster")
    guard.check_tif_name(req.correctness, "correctness raster")
    staged: list = []  # the outputs, put in place together once the report is made (output.commit_together)
    try:
        report = reference_mode(req, staged) if req.sr else degradation_mode(req, progress, is_cancelled, staged)
        for note in report.notes:
            log.info("%s", note)
        if req.html:
            staged.append(output.OutputText(req.html, render_html(report)))
        output.commit_together(staged)
    except BaseException:
        for out in staged:
            out.discard()
        raise
    report.difference = req.difference or None
    report.correctness = req.correctness or None
    report.html = req.html or None
    progress(1.0)
    return report


def reference_mode(req: EvaluateRequest, staged: list) -> Report:
    ref = load(req.reference, req.bands, "reference")
    sr = load(req.sr, req.bands, "SR raster")
    low = load(req.lr, req.bands, "LR raster") if req.lr else None
    if (sr.info.width, sr.info.height) != (ref.info.width, ref.info.height):
        raise LatentSRError(f"the SR raster is {sr.info.width}×{sr.info.height} pixels and the reference "
                            f"{ref.info.width}×{ref.info.height}: they must be on the same grid")
    if len(sr.info.bands) != len(ref.info.bands):
        raise LatentSRError(f"the SR raster has {len(sr.info.bands)} band(s) and the reference {len(ref.info.bands)}: "
                            "select the same number of bands")
    notes, warnings = [], georeferencing_warnings(sr.info, ref.info)
    valid = sr.valid & ref.valid
    if not valid.any():
        raise LatentSRError("no pixel is valid in both the SR raster and the reference")
    diff = difference_of(sr, ref, 0) if req.difference else None
    shift = overflow_shift(notes, sr, ref, *([low] if low else []))
    sr, ref, low = (shifted(r, shift) for r in (sr, ref, low))
    drange = data_range(ref, valid)
    s, h = joint_fill(sr.data, ref.data, valid)
    scale, lr, lr_valid = req.scale, None, None
    if low is not None:
        if len(low.info.bands) != len(ref.info.bands):
            raise LatentSRError(f"the LR raster has {len(low.info.bands)} band(s) and the reference {len(ref.info.bands)}")
        if low.info.width >= ref.info.width or low.info.height >= ref.info.height:
            raise LatentSRError(f"the LR raster ({low.info.width}×{low.info.height}) must be smaller than the reference "
                                f"({ref.info.width}×{ref.info.height})")
        lr = low.data
        lr_valid = low.valid & lr_validity(valid, low.info.height, low.info.width)
        if scale is None:
            scale = math.sqrt(ref.info.width / low.info.width * ref.info.height / low.info.height)
        notes.append(f"Consistency PSNR: downsample(SR) against the LR raster {req.lr}.")
    elif scale is not None:
        lr_h, lr_w = max(1, round(ref.info.height / scale)), max(1, round(ref.info.width / scale))
        lr = downsample(h, lr_h, lr_w)
        lr_valid = lr_validity(valid, lr_h, lr_w)
        notes.append(f"Consistency PSNR: no LR raster given, so the LR is the reference degraded to {lr_w}×{lr_h}.")
    else:
        notes.append("No scale and no LR raster: ERGAS and the consistency PSNR are not available, no border is cropped.")
    check_crop(ref.info.width, ref.info.height, scale)
    base = None if lr is None else baseline_fill(cubic_upsample(lr, *h.shape[1:]), ref.data, valid)
    if base is not None:
        notes.append("Lattice: SR − bicubic of the LR against the reference's HR − bicubic of the LR.")
    rows = [score(os.path.basename(req.sr), s, h, valid, lr, lr_valid, scale, drange, base)]
    if req.difference:
        staged.append(write_difference(req.difference, sr.ds, sr.info, diff, valid))
    if req.correctness:
        staged.append(write_classes(req.correctness, sr.ds, sr.info, rows[0].classes))
    report = make_report("reference", req, ref, scale, drange, rows, notes, band_names(ref, sr), shift)
    report.warnings = warnings
    return report


def bounds(info: raster.RasterInfo) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a raster's four corners in its CRS."""
    gt = info.geotransform
    xs, ys = zip(*[(gt[0] + px * gt[1] + py * gt[2], gt[3] + px * gt[4] + py * gt[5])
                   for px in (0, info.width) for py in (0, info.height)])
    return min(xs), min(ys), max(xs), max(ys)


def in_crs(box: tuple[float, float, float, float], source: str, target: str) -> tuple[float, float, float, float] | None:
    """``box`` from the CRS ``source`` into ``target`` (the bounds of its transformed corners), or
    None when it cannot be transformed."""
    from osgeo import osr

    try:
        a, b = osr.SpatialReference(), osr.SpatialReference()
        a.ImportFromWkt(source)
        b.ImportFromWkt(target)
        for srs in (a, b):
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        ct = osr.CoordinateTransformation(a, b)
        points = [ct.TransformPoint(x, y)[:2] for x in (box[0], box[2]) for y in (box[1], box[3])]
    except (RuntimeError, TypeError):
        return None
    xs, ys = zip(*points)
    if not all(math.isfinite(v) for v in xs + ys):
        return None
    return min(xs), min(ys), max(xs), max(ys)


def same_crs(a: str, b: str) -> bool:
    from osgeo import osr

    if not a or not b:
        return a == b
    try:
        sa, sb = osr.SpatialReference(), osr.SpatialReference()
        sa.ImportFromWkt(a)
        sb.ImportFromWkt(b)
        return bool(sa.IsSame(sb))
    except RuntimeError:
        return a == b


def georeferencing_warnings(sr: raster.RasterInfo, ref: raster.RasterInfo) -> list[str]:
    """Warnings when the SR raster and the reference differ in CRS or geotransform (they are still
    compared pixel by pixel); a refusal when their extents do not overlap at all."""
    warnings = []
    crs_same = same_crs(sr.projection, ref.projection)
    if not crs_same:
        warnings.append("The SR raster and the reference have different CRSs; they are compared pixel by pixel, "
                        "which is only right if they cover the same ground.")
    if (sr.geotransform is None) != (ref.geotransform is None):
        warnings.append("Only one of the SR raster and the reference is georeferenced; they are compared pixel by pixel.")
    elif sr.geotransform and ref.geotransform:
        if crs_same and not np.allclose(sr.geotransform, ref.geotransform, rtol=0,
                                        atol=0.01 * abs(ref.geotransform[1])):
            warnings.append("The SR raster and the reference have different geotransforms; they are compared "
                            "pixel by pixel.")
        box = bounds(sr) if crs_same else in_crs(bounds(sr), sr.projection, ref.projection)
        other = bounds(ref)
        if box is not None and (box[0] >= other[2] or box[2] <= other[0] or box[1] >= other[3] or box[3] <= other[1]):
            raise LatentSRError("the SR raster and the reference do not overlap on the ground: they show different places")
    return warnings


def degraded_size(n: int, scale: float) -> int:
    """The LR size for an HR axis of n pixels: the largest m with m × scale a whole number of pixels
    not above n, or floor(n / scale) when there is none."""
    m = int(n // scale)
    if m < 1:
        raise LatentSRError(f"the reference ({n} pixels a side) is too small for scale {scale:g}")
    exact = m
    while exact >= 1 and abs(exact * scale - round(exact * scale)) > 1e-9:
        exact -= 1
    return exact if exact >= 1 else m


def degradation_mode(req: EvaluateRequest, progress: Callable[[float], None],
                     is_cancelled: Callable[[], bool], staged: list) -> Report:
    if req.scale is None:
        raise LatentSRError("without an SR raster, evaluate degrades the reference itself and needs a scale")
    if req.lr:
        raise LatentSRError("an LR raster is only used with an SR raster; without one the LR is made from the reference")
    scale = req.scale
    chosen = req.options.method
    full = load(req.reference, req.bands, "reference")
    lr_w, lr_h = degraded_size(full.info.width, scale), degraded_size(full.info.height, scale)
    hr_w, hr_h = output_size(lr_w, scale), output_size(lr_h, scale)
    check_crop(hr_w, hr_h, scale)
    info = replace(full.info, width=hr_w, height=hr_h)
    ref = Loaded(full.ds, info, full.data[:, :hr_h, :hr_w], full.valid[:, :hr_h, :hr_w])
    if not ref.valid.any():
        raise LatentSRError("the reference has no valid pixel")
    notes = [f"The reference was cropped to its top-left {hr_w}×{hr_h} pixels and degraded to {lr_w}×{lr_h} "
             f"(antialiased bicubic, the training degradation); each method super-resolved that LR ×{scale:g}."]
    shift = overflow_shift(notes, ref)
    ref = shifted(ref, shift)
    drange = data_range(ref, ref.valid)
    _, hr_filled = joint_fill(ref.data, ref.data, ref.valid)
    lr_valid = lr_validity(ref.valid, lr_h, lr_w)
    degraded = downsample(hr_filled, lr_h, lr_w).astype(np.float64)
    lr = to_storage(np.ldexp(degraded, shift), [IDENTITY] * len(info.bands), info.dtype, info.nodata, lr_valid)
    methods = [chosen] if chosen == BICUBIC.name else [chosen, BICUBIC.name]
    runs = ([REGRESSION.name] if chosen in LATTICE_REGRESSION else []) + methods  # the regression: the lattice's baseline
    rows, difference, classes = [], None, None
    with tempfile.TemporaryDirectory(prefix="latentsr-evaluate-") as tmp:
        lr_path = os.path.join(tmp, "lr.tif")
        out = output.OutputRaster(lr_path, ref.ds, info, lr_w, lr_h)
        try:
            out.write(lr, 0, 0)
        except BaseException:
            out.discard()
            raise
        out.commit()
        lr_data = np.ldexp(lr.astype(np.float64), -shift)
        base = None
        for k, method in enumerate(runs):
            if is_cancelled():
                raise Cancelled()
            sr_path = os.path.join(tmp, f"sr-{method}.tif")
            options = req.options if method == chosen else replace(req.options, method=method, steps=None, detail=None)
            superresolve(Request(input=lr_path, output=sr_path, options=options, scale=scale),
                         progress=lambda f, k=k: progress(0.9 * (k + f) / len(runs)), is_cancelled=is_cancelled)
            sr = shifted(load(sr_path, None, "SR raster"), shift)
            valid = sr.valid & ref.valid
            if k == 0:  # the lattice's baseline: the regression, or else the bicubic of the LR
                base = sr.data if method != chosen else cubic_upsample(lr_data, hr_h, hr_w)
                base = baseline_fill(base, ref.data, valid)
                notes.append(f"Lattice: {chosen} − {REGRESSION.name if method != chosen else BICUBIC.name + ' of the LR'} "
                             f"against the reference's HR − the same.")
            if method not in methods:
                sr = None
                continue
            s, h = joint_fill(sr.data, ref.data, valid)
            rows.append(score(method, s, h, valid, lr_data, lr_validity(valid, lr_h, lr_w), scale, drange,
                              base if method == chosen else None))
            if method == chosen and req.difference:  # the method's, on the reference's grid; written once all ran
                difference = (sr.ds, sr.info, difference_of(sr, ref, shift), valid)
            if method == chosen and req.correctness:
                classes = (sr.ds, sr.info, rows[0].classes)
            sr = None
        if difference:
            staged.append(write_difference(req.difference, *difference))
        if classes:
            staged.append(write_classes(req.correctness, *classes))
        difference = classes = None  # closes the SR dataset before its folder is removed
    return make_report("degradation", req, ref, scale, drange, rows, notes, band_names(ref), shift)


def band_names(*rasters: Loaded) -> list[str]:
    """Per selected band, the first description found in ``rasters`` ('' when none has one)."""
    return [next((d for d in descriptions if d), "") for descriptions in
            zip(*([r.ds.GetRasterBand(b).GetDescription() for b in r.info.bands] for r in rasters))]


def make_report(mode: str, req: EvaluateRequest, ref: Loaded, scale: float | None, drange: float,
                rows: list[Scores], notes: list[str], names: list[str], shift: int = 0) -> Report:
    """The report; ``drange`` is in the units scored, the values as stored × 2^-``shift``."""
    shown = f"{drange:g}" + (f" × 2^{shift}" if shift else "")
    what = "Byte" if ref.info.dtype == np.uint8 else "valid max − min of the reference"
    notes.append(f"Data range {shown} ({what}); "
                 f"border crop {math.ceil(scale) if scale else 0} pixels; nodata pixels of either raster are excluded.")
    with np.errstate(over="ignore"):
        stored = float(np.ldexp(drange, shift))
    return Report(mode, req.reference, list(ref.info.bands), names, scale, stored,
                  math.ceil(scale) if scale else 0, rows, notes)


SAFE_MAGNITUDE = 2.0 ** 100  # larger values are scored scaled down (module notes)


def overflow_shift(notes: list[str], *rasters: Loaded) -> int:
    """0, or the k for which the valid values of ``rasters`` × 2^-k lie within ±SAFE_MAGNITUDE, so
    that no difference, square or sum of them overflows (and the float32 resampling neither); then
    a note says so. Every metric is unchanged by a common scale, and × 2^-k is exact."""
    peak = max(float(np.abs(r.data[r.valid]).max(initial=0.0)) for r in rasters)
    if peak <= SAFE_MAGNITUDE:
        return 0
    shift = math.ceil(math.log2(peak / SAFE_MAGNITUDE))
    notes.append(f"Values reach {peak:.3g}, so large that their differences and squares overflow: they were scored "
                 f"× 2^-{shift} (exact; every metric here is scale-free).")
    return shift


def shifted(r: Loaded | None, shift: int) -> Loaded | None:
    """``r`` with its values × 2^-``shift``."""
    return replace(r, data=np.ldexp(r.data, -shift)) if r is not None and shift else r


def difference_of(sr: Loaded, ref: Loaded, shift: int) -> np.ndarray:
    """SR − HR in stored units, of values held × 2^-``shift``, clipped to the Float32 range of the
    difference raster (never infinite)."""
    limit = float(np.finfo(np.float32).max)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(np.ldexp(sr.data - ref.data, shift), -limit, limit)


def write_difference(path: str, src, info: raster.RasterInfo, diff: np.ndarray,
                     valid: np.ndarray) -> output.OutputRaster:
    """SR − HR as Float32 on the SR's grid and georeferencing, NaN where either raster has no data;
    written, to be put in place with the run's other outputs (output.commit_together)."""
    n = len(info.bands)
    out = output.OutputRaster(path, src, info, info.width, info.height, dtype=raster.FLOAT32, nodata=[math.nan] * n)
    try:
        out.write(np.where(valid, diff, np.nan).astype(np.float32), 0, 0)
    except BaseException:
        out.discard()
        raise
    return out


def write_classes(path: str, src, info: raster.RasterInfo, classes: np.ndarray) -> output.OutputRaster:
    """The correctness class per pixel (engine.metrics: 1 improvement, 2 omission, 3 hallucination;
    0, the nodata value, where a pixel is not classified) as a one-band Byte GeoTIFF on the SR's grid;
    written, to be put in place with the run's other outputs (output.commit_together)."""
    one = replace(info, bands=(info.bands[0],), dtype=np.dtype(np.uint8), nodata=(0,))
    out = output.OutputRaster(path, src, one, info.width, info.height, dtype=gdal.GDT_Byte, nodata=[0])
    try:
        band = out.ds.GetRasterBand(1)
        band.SetDescription("correctness: 1 improvement, 2 omission, 3 hallucination")
        band.SetColorInterpretation(gdal.GCI_GrayIndex)
        out.write(classes[None].astype(np.uint8), 0, 0)
    except BaseException:
        out.discard()
        raise
    return out
