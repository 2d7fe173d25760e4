"""The spectrum behind the bench's lattice figure (training/bench/spectrum.py, docs/spectrum.png)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine import metrics
from training.bench import quality, spectrum

from tests.test_metrics import pink_texture
from tests.test_models import bundle, model_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def band_filtered(n: int, gain, seed: int) -> np.ndarray:
    """White noise whose amplitude at frequency f (cycles/pixel, the larger of |fx| and |fy|) is gain(f)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    return np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * gain(np.maximum(abs(fx), abs(fy)))))


def test_detail_spectrum_is_the_lattice_figures_power_per_bin():
    """Its bins are the lattice figure's (axis_power, both axes averaged), from 0.125 cycles/pixel to
    Nyquist, divided by their mean: an LR-period hatch at ×4 is all at 0.25, white noise flat."""
    n = 248
    t = np.arange(n)
    hatch = np.add.outer(np.cos(2 * np.pi * t / 4 + 0.3), np.cos(2 * np.pi * t / 4 + 1.1))
    freq, power = spectrum.detail_spectrum(np.stack([hatch] * 3))
    assert freq[0] == pytest.approx(31 / n) and freq[-1] == 0.5 and power.mean() == pytest.approx(1.0)
    both = (metrics.axis_power(hatch, 0) + metrics.axis_power(hatch, 1)) / 2
    assert power * both[31:].mean() == pytest.approx(both[31:])
    assert power[freq == 0.25].sum() > 0.999 * power.sum()
    _, noise = spectrum.detail_spectrum(np.random.default_rng(0).normal(size=(n, n)))
    assert np.median(noise) == pytest.approx(1.0, abs=0.1)
    assert np.isnan(spectrum.detail_spectrum(np.zeros((n, n)))[1]).all()


def test_a_steep_fall_across_the_harmonic_moves_the_figure_without_a_peak():
    """What the spectrum is for: texture whose power falls 3× over the few bins just above 1/3 cycles/pixel
    has no peak at ×3's harmonic (its bin is no higher than the bin below it), yet its lattice figure is
    well above 0, and the same texture with the fall just below the harmonic well below."""
    n = 249
    for edge, sign in ((0.345, 1), (0.322, -1)):
        def gain(f):
            return 1.0 / np.sqrt(1.0 + 2.0 / (1.0 + np.exp(-(f - edge) / 0.004)))

        img = band_filtered(n, gain, 4)
        figure = metrics.lattice(img, 3.0)
        assert sign * figure > 0.5, figure
        _, power = spectrum.detail_spectrum(img)
        j = 83 - int(np.ceil(0.125 * n))  # the harmonic's bin, round(249 / 3)
        assert power[j] <= max(power[j - 1], power[j + 1]) * 1.25


def test_mean_spectrum_over_images_of_two_sizes_skips_those_without_detail():
    acc = spectrum.MeanSpectrum()
    assert acc.result() is None
    a, b = pink_texture(248, 2.0, 1), pink_texture(249, 2.0, 2)
    acc.add(a)
    acc.add(np.zeros((100, 100)))  # no detail: no shape to average
    acc.add(b)
    assert acc.count == 2
    got = acc.result()
    fa, pa = spectrum.detail_spectrum(a)
    fb, pb = spectrum.detail_spectrum(b)
    assert got["freq"] == fa.tolist()
    assert np.allclose(got["power"], (pa + np.interp(fa, fb, pb)) / 2)


def test_bench_worker_keeps_the_spectra_and_the_picture_draws_them(model_dir, tmp_path):
    """A diffusion row's worker returns, per scale, the mean spectra of its added detail and of HR's
    beside its lattice figures; a deterministic row has none; the picture is written."""
    rng = np.random.default_rng(0)
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "val" / "a" / "a1.png")
    files = [tmp_path / "val" / "a" / "a1.png"]
    out = quality.worker(quality.Row("lcmsr", 1, 1.0), files, [3.0, 4.0], str(model_dir), tmp_path, "torch",
                         tmp_path / "val")
    assert set(out["spectra"]) == {"3.0", "4.0"}
    for key, s in out["spectra"].items():
        assert set(s) == {"sr", "hr"}
        assert s["sr"]["freq"] == s["hr"]["freq"] and s["sr"]["freq"][-1] <= 0.5
        assert np.mean(s["sr"]["power"]) == pytest.approx(1.0) and np.isfinite(out["scales"][key]["lattice"])
    assert "spectra" not in quality.worker(quality.Row("regression"), files, [4.0], str(model_dir), tmp_path,
                                           "torch", tmp_path / "val")
    picture = tmp_path / "spectrum.png"
    spectrum.picture({float(k): v for k, v in out["spectra"].items()}, picture, "test")
    with Image.open(picture) as im:
        assert im.size[0] > 2 * im.size[1]
