"""Image-quality metrics for SR against a reference (pure numpy, C×H×W arrays in the same units).

PSNR and SSIM use ``data_range`` (255 for 8-bit imagery). ERGAS follows Wald: 100/scale ×
sqrt(mean over bands of RMSE²/mean²). SAM is the mean spectral angle in degrees. The
high-frequency ratio compares spectral energy above a quarter of Nyquist (0.125 cycles/pixel):
below 1 means blurrier than the reference, above 1 means more high-frequency content (detail or noise).
"""
from __future__ import annotations

import math

import numpy as np

from .resample import downsample


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
    """The table's metrics; PSNR, SSIM, ERGAS, SAM and the HF ratio on a border crop of ceil(scale)."""
    b = math.ceil(scale)
    s, h = crop_border(sr, b), crop_border(hr, b)
    return {"psnr": psnr(s, h, data_range), "ssim": ssim(s, h, data_range), "ergas": ergas(s, h, scale),
            "sam": sam(s, h), "consistency_psnr": consistency_psnr(sr, lr, data_range), "hf_ratio": hf_ratio(s, h)}
