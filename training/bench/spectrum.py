"""The spectrum behind the quality bench's lattice figure (docs/spectrum.png).

engine.metrics.lattice sums an added detail's power at the LR pixel frequency's harmonics against the
bins 2–6 away on either side. One number cannot tell a narrow peak (a pattern locked to the LR
pixels) from a spectrum that falls or rises steeply across the harmonic: a drop that begins just
above the harmonic's bin puts the peak above the mean of its two sides, and a bump in one side's
bins pulls the figure below zero. So the bench also keeps the mean spectrum of each diffusion row's
added detail (SR − regression) and of HR's (HR − regression) at every scale it runs, and draws those
of the default LCMSR row with the harmonics and their adjacent bins marked.

``detail_spectrum`` is what the lattice figure reads, per frequency: the band mean's power along each
axis averaged over the other (engine.metrics.axis_power), the two axes averaged, from 1/8 cycles/pixel
(the LSD band's start) to Nyquist, divided by its own mean over that band so that every image counts
by its shape, not its contrast. ``MeanSpectrum`` averages them over images on the first image's bins
(the others, of another size, interpolated onto them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine import metrics

def detail_spectrum(detail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, power / its mean) of an added detail C×H×W or H×W (engine.metrics.lattice's sums,
    per bin) on its top-left square, from the LSD band's start (engine.metrics.LSD_BAND) to Nyquist;
    the power is NaN where the detail has none."""
    img = np.asarray(detail, np.float64)
    if img.ndim == 3:
        img = img.mean(axis=0)
    n = min(img.shape)
    img = img[:n, :n]
    power = (metrics.axis_power(img, 0) + metrics.axis_power(img, 1)) / 2.0
    j = np.arange(int(np.ceil(metrics.LSD_BAND[0] * n)), n // 2 + 1)
    p, mean = power[j], power[j].mean()
    return j / n, (p / mean if mean > 0 else np.full(len(j), np.nan))


class MeanSpectrum:
    """The mean of ``detail_spectrum`` over images, on the first image's frequencies."""

    def __init__(self):
        self.freq: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, detail: np.ndarray) -> None:
        freq, power = detail_spectrum(detail)
        if not np.all(np.isfinite(power)):
            return
        if self.freq is None:
            self.freq, self.total = freq, np.zeros_like(power)
        self.total += np.interp(self.freq, freq, power)
        self.count += 1

    def result(self) -> dict | None:
        """{"freq", "power"} as lists (JSON), None before any image with detail."""
        if not self.count:
            return None
        return {"freq": self.freq.tolist(), "power": (self.total / self.count).tolist()}


def picture(spectra: dict[float, dict], out: Path, title: str) -> None:
    """One panel per scale: the added detail's and HR's mean spectra (``spectra``: scale -> {"sr": ...,
    "hr": ...}, each MeanSpectrum.result()), the harmonics k/scale as lines and their adjacent bins
    (engine.metrics.lattice_bins on the first spectrum's image size) shaded, log power."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted(spectra)
    fig, axes = plt.subplots(1, len(scales), figsize=(3.6 * len(scales), 3.4), dpi=110, squeeze=False)
    for ax, scale in zip(axes[0], scales):
        for key, label, colour in (("hr", "HR − regression", "C2"), ("sr", "SR − regression", "C0")):
            s = spectra[scale][key]
            ax.semilogy(s["freq"], s["power"], color=colour, linewidth=1.0, label=label)
        freq = np.asarray(spectra[scale]["sr"]["freq"])
        n = round(1.0 / (freq[1] - freq[0]))
        for j, near in metrics.lattice_bins(n, scale):
            ax.axvline(j / n, color="C3", linewidth=0.8, linestyle="--")
            for i in near:
                ax.axvspan((i - 0.5) / n, (i + 0.5) / n, color="C3", alpha=0.08, linewidth=0)
        ax.set_title(f"×{scale:g}", fontsize=9)
        ax.set_xlabel("cycles / pixel", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("power / its mean over 0.125–0.5", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
