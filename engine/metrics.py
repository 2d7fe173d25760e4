"""Image-quality metrics for SR against a reference (pure numpy, C×H×W arrays in the same units).

PSNR and SSIM use ``data_range`` (255 for 8-bit imagery). ERGAS follows Wald: 100/scale ×
sqrt(mean over bands of RMSE²/mean²). SAM is the mean spectral angle in degrees. The
high-frequency ratio compares spectral energy above a quarter of Nyquist (0.125 cycles/pixel):
below 1 means blurrier than the reference, above 1 means more high-frequency content (detail or noise).

LSD, the log-spectral distance (docs/MODELS.md, DESIGN.md): the power spectrum of the band-mean image
(its mean removed), averaged radially in 24 equal bins of radius 0.125..0.5 cycles/pixel; LSD = 10 ×
the RMS over the bins of the difference of log10 power, in dB. 0 is the reference's spectrum; blur
and noise both raise it.

The lattice figure (``lattice``): the power of an added detail (SR − regression, or HR − regression
beside it) at the LR pixel frequency 1/scale and its harmonics ≤ 0.5 cycles/pixel, along both axes,
against the bins 2–6 away from them, in dB (0: no peak; its docstring defines it exactly).

Correctness (ESA opensr-test's improvement / omission / hallucination, with the L1 distance, in our
own code): per pixel, the band-mean L1 distances d_ref = |LR↑ − HR|, d_im = |SR − HR| and
d_om = |SR − LR↑| (LR↑ the bicubic LR on the HR grid). Pixels where none of the three exceeds the
75th percentile of d_ref are not classified (too flat to tell). On the others, with the relative
distances a = d_im/d_ref and b = d_om/d_ref and H = a + b − 1, the three scores are
improvement a + b·(1 − e^(−λH)), omission b + a·(1 − e^(−λH)) and hallucination e^(−λab), λ = 0.05;
the class is the largest softmin (temperature 0.25) of the scores, i.e. the smallest score. The
shares are the fractions of classified pixels in each class.
"""
from __future__ import annotations

import math

import numpy as np

from .resample import cubic_upsample, downsample


def crop_border(x: np.ndarray, border: int) -> np.ndarray:
    return x[..., border:x.shape[-2] - border, border:x.shape[-1] - border] if border > 0 else x


def psnr(x: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((x.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def gaussian_blur(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, 'valid' region only (as in Wang et al.)."""
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    win = np.lib.stride_tricks.sliding_window_view(x, 2 * radius + 1, axis=-1) @ k
    win = np.lib.stride_tricks.sliding_window_view(win, 2 * radius + 1, axis=-2) @ k
    return win


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """Mean SSIM over bands, 11×11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03."""
    x, ref = x.astype(np.float64), ref.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = gaussian_blur(x), gaussian_blur(ref)
    vx = gaussian_blur(x * x) - mx * mx
    vy = gaussian_blur(ref * ref) - my * my
    cov = gaussian_blur(x * ref) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def ergas(x: np.ndarray, ref: np.ndarray, scale: float) -> float:
    x, ref = x.astype(np.float64), ref.astype(np.float64)
    rmse2 = ((x - ref) ** 2).reshape(x.shape[0], -1).mean(axis=1)
    mean2 = ref.reshape(ref.shape[0], -1).mean(axis=1) ** 2
    return float(100.0 / scale * math.sqrt(np.mean(rmse2 / np.maximum(mean2, 1e-12))))


def sam(x: np.ndarray, ref: np.ndarray) -> float:
    """Mean spectral angle (degrees) between the band vectors of each pixel."""
    x, ref = x.astype(np.float64).reshape(x.shape[0], -1), ref.astype(np.float64).reshape(ref.shape[0], -1)
    dot = (x * ref).sum(axis=0)
    norm = np.linalg.norm(x, axis=0) * np.linalg.norm(ref, axis=0)
    ok = norm > 0
    cos = np.clip(dot[ok] / norm[ok], -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).mean()) if ok.any() else 0.0


def high_frequency_energy(x: np.ndarray, cutoff: float = 0.125) -> float:
    """Spectral energy above ``cutoff`` cycles/pixel (radial), summed over bands, mean removed."""
    x = x.astype(np.float64)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.rfft2(x)) ** 2
    fy = np.fft.fftfreq(x.shape[-2])[:, None]
    fx = np.fft.rfftfreq(x.shape[-1])[None, :]
    return float(power[..., np.hypot(fy, fx) > cutoff].sum())


def hf_ratio(x: np.ndarray, ref: np.ndarray) -> float:
    ref_energy = high_frequency_energy(ref)
    return high_frequency_energy(x) / ref_energy if ref_energy > 0 else math.nan


def consistency_psnr(sr: np.ndarray, lr: np.ndarray, data_range: float) -> float:
    """PSNR of the SR degraded back to the LR grid (antialiased bicubic) against the LR."""
    return psnr(downsample(sr, lr.shape[-2], lr.shape[-1]), lr, data_range)


def all_metrics(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: float, data_range: float) -> dict[str, float]:
    """The table's metrics; all but the consistency PSNR on a border crop of ceil(scale) (the
    correctness classes on the pixels inside it, with the bicubic LR on the HR grid)."""
    b = math.ceil(scale)
    s, h = crop_border(sr, b), crop_border(hr, b)
    inner = np.zeros(hr.shape[-2:], bool)
    inner[b:hr.shape[-2] - b, b:hr.shape[-1] - b] = True
    classes = correctness_map(sr, hr, cubic_upsample(lr, *hr.shape[-2:]), inner)
    return {"psnr": psnr(s, h, data_range), "ssim": ssim(s, h, data_range), "ergas": ergas(s, h, scale),
            "sam": sam(s, h), "consistency_psnr": consistency_psnr(sr, lr, data_range), "hf_ratio": hf_ratio(s, h),
            "lsd": lsd(s, h), **correctness_shares(classes)}


LSD_BINS = 24
LSD_BAND = (0.125, 0.5)  # cycles per pixel


def radial_power(x: np.ndarray, bins: int = LSD_BINS, band: tuple[float, float] = LSD_BAND) -> np.ndarray:
    """Mean power per radial frequency bin of the band-mean image of ``x`` (C×H×W or H×W), its mean
    removed; NaN for a bin that holds no frequency (tiny images)."""
    img = x.astype(np.float64)
    if img.ndim == 3:
        img = img.mean(axis=0)
    img = img - img.mean()
    power = np.abs(np.fft.fft2(img)) ** 2 / img.size
    radius = np.hypot(np.fft.fftfreq(img.shape[0])[:, None], np.fft.fftfreq(img.shape[1])[None, :])
    edges = np.linspace(band[0], band[1], bins + 1)
    inside = (radius >= edges[0]) & (radius <= edges[-1])
    which = np.clip(np.digitize(radius[inside], edges) - 1, 0, bins - 1)
    total = np.bincount(which, weights=power[inside], minlength=bins)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def lsd(x: np.ndarray, ref: np.ndarray) -> float:
    """The log-spectral distance of ``x`` to ``ref`` in dB (module notes); same shapes."""
    if x.shape != ref.shape:
        raise ValueError(f"lsd needs images of the same shape, got {x.shape} and {ref.shape}")
    px, pr = radial_power(x), radial_power(ref)
    ok = np.isfinite(px) & np.isfinite(pr)
    if not ok.any():
        return math.nan
    tiny = 1e-30  # a flat image has zero power: a large, finite distance instead of infinity
    diff = np.log10(np.maximum(px[ok], tiny)) - np.log10(np.maximum(pr[ok], tiny))
    return float(10.0 * math.sqrt(np.mean(diff ** 2)))


CORRECTNESS_LAMBDA = 0.05  # opensr-test's im_score, om_score and ha_score
CORRECTNESS_TEMPERATURE = 0.25
CORRECTNESS_QUANTILE = 0.75  # opensr-test's "auto" gradient threshold: this quantile of d_ref
CLASSES = ("improvement", "omission", "hallucination")  # class k + 1 in the raster; 0: not classified


def correctness_scores(a: np.ndarray, b: np.ndarray, lam: float = CORRECTNESS_LAMBDA) -> np.ndarray:
    """The improvement, omission and hallucination scores (3×…) of relative distances ``a`` = d_im/d_ref
    and ``b`` = d_om/d_ref; lower is closer to that class."""
    h = a + b - 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        pull = 1.0 - np.exp(-lam * h)
        return np.stack([a + b * pull, b + a * pull, np.exp(-lam * a * b)])


def correctness_map(sr: np.ndarray, hr: np.ndarray, lr_up: np.ndarray,
                    valid: np.ndarray | None = None) -> np.ndarray:
    """Per pixel: 1 improvement, 2 omission, 3 hallucination, 0 not classified (uint8 H×W); the
    images are C×H×W in the same units (module notes). ``valid`` (H×W) limits the pixels used."""
    d_ref = np.abs(lr_up - hr).mean(axis=0)
    d_im = np.abs(sr - hr).mean(axis=0)
    d_om = np.abs(sr - lr_up).mean(axis=0)
    use = np.ones(d_ref.shape, bool) if valid is None else valid
    out = np.zeros(d_ref.shape, np.uint8)
    if not use.any():
        return out
    refs = np.sort(d_ref[use].ravel())
    threshold = refs[max(int(CORRECTNESS_QUANTILE * refs.size) - 1, 0)]  # the k-th smallest, k = int(q·n)
    pick = use & ((d_ref > threshold) | (d_im > threshold) | (d_om > threshold))
    base = np.maximum(d_ref[pick], 1e-12)
    scores = correctness_scores(d_im[pick] / base, d_om[pick] / base)
    scores = np.nan_to_num(scores, nan=np.inf, posinf=np.inf)
    out[pick] = np.argmin(scores, axis=0).astype(np.uint8) + 1  # the largest softmin is the smallest score
    return out


def correctness_shares(classes: np.ndarray) -> dict[str, float]:
    """The share of the classified pixels in each class (NaN when no pixel is classified)."""
    n = int((classes > 0).sum())
    return {name: (float((classes == k + 1).sum()) / n if n else math.nan) for k, name in enumerate(CLASSES)}


LATTICE_NEAR = 2  # adjacent bins: from this many bins away from a harmonic's bin ...
LATTICE_FAR = 6  # ... to this many, on both sides


def axis_power(img: np.ndarray, axis: int) -> np.ndarray:
    """The power spectrum along ``axis`` of a 2-D image (mean removed), averaged over the other axis,
    per frequency bin j = 0..n//2 (frequency j/n cycles/pixel): 2·|X_j|²/n², so that white noise of
    variance σ² has 2σ²/n in every bin, the Nyquist bin included, and a cosine of amplitude A
    between DC and Nyquist puts A²/2 (its variance) into its bin."""
    n = img.shape[axis]
    return 2.0 * (np.abs(np.fft.rfft(img - img.mean(), axis=axis)) ** 2).mean(axis=1 - axis) / n ** 2


def lattice_bins(n: int, scale: float) -> list[tuple[int, list[int]]]:
    """For an axis of n pixels, each harmonic k/scale ≤ 0.5 cycles/pixel of the LR pixel frequency:
    (its bin round(k·n/scale), its adjacent bins: LATTICE_NEAR..LATTICE_FAR bins away on both sides,
    inside 1..n//2 and further than one bin from every harmonic's bin). Harmonics whose bin has no
    adjacent bin (tiny images) are left out."""
    peaks = [round(k * n / scale) for k in range(1, int(math.floor(0.5 * scale + 1e-9)) + 1)]
    peaks = [j for j in dict.fromkeys(peaks) if 1 <= j <= n // 2]
    out = []
    for j in peaks:
        near = [i for d in range(LATTICE_NEAR, LATTICE_FAR + 1) for i in (j - d, j + d)
                if 1 <= i <= n // 2 and all(abs(i - p) > 1 for p in peaks)]
        if near:
            out.append((j, sorted(near)))
    return out


def lattice(detail: np.ndarray, scale: float) -> float:
    """The lattice figure of an added detail (e.g. SR − regression, or HR − regression), in dB: how
    much of its power sits at the LR pixel frequency and its harmonics, against the frequencies next
    to them. ``detail`` is C×H×W (its band mean is used) or H×W; ``scale`` the output/LR pixel ratio.

    Definition. For each axis (x: along rows, y: along columns) of n pixels, P(j) is the detail's
    power at frequency j/n cycles/pixel, averaged over the other axis (``axis_power``: a pattern
    locked to the LR columns puts its power at the same bins in every row, whatever it does along
    the columns). The harmonics are the frequencies k/scale ≤ 0.5 cycles/pixel, k = 1, 2, ...
    (×4: 0.25 and 0.5; ×2: 0.5; ×3: 0.333; none below ×2, where the figure is NaN); each one's
    bin is round(k·n/scale), and its adjacent bins are those 2 to 6 bins away on either side,
    inside 1..n/2 and not within one bin of any harmonic's bin (the next bin is left out: it holds
    what leaks from a period that falls between bins). With the sums over both axes and all
    harmonics, peak = Σ P(harmonic's bin) and background = Σ mean of P over its adjacent bins, and

        lattice = 10·log10(peak / background)  dB.

    0 dB: the harmonics hold what their neighbours hold (white noise, texture that does not know
    the LR grid); each +10 dB is ten times more. A detail with power at the harmonics and none
    around them gives +inf, one with none at the harmonics −inf, one with no power at all NaN.
    """
    img = np.asarray(detail, np.float64)
    if img.ndim == 3:
        img = img.mean(axis=0)
    peak = background = 0.0
    for axis in (0, 1):
        bins = lattice_bins(img.shape[axis], scale)
        if not bins:
            continue
        power = axis_power(img, axis)
        for j, near in bins:
            peak += float(power[j])
            background += float(power[near].mean())
    if background > 0:
        return 10.0 * math.log10(peak / background) if peak > 0 else -math.inf
    return math.inf if peak > 0 else math.nan
