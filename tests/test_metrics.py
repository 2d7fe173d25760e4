"""Metrics against hand-computed values, and the degradation against torch's."""
import math

import numpy as np
import pytest

from engine import metrics
from engine.resample import downsample


def test_psnr_by_hand():
    ref = np.zeros((1, 4, 4))
    x = ref.copy()
    x[0, 0, 0] = 4.0  # mse = 16 / 16 = 1
    assert metrics.psnr(x, ref, 255) == pytest.approx(20 * math.log10(255))
    assert metrics.psnr(ref, ref, 255) == math.inf


def test_ssim_by_hand():
    a = np.full((1, 16, 16), 100.0)
    b = np.full((1, 16, 16), 120.0)
    c1 = (0.01 * 255) ** 2
    assert metrics.ssim(a, b, 255) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))
    rng = np.random.default_rng(0)
    x = rng.random((3, 32, 32)) * 255
    assert metrics.ssim(x, x, 255) == pytest.approx(1.0)
    assert metrics.ssim(x, x + rng.normal(0, 80, x.shape), 255) < 0.8


def test_ergas_and_sam_by_hand():
    ref = np.full((1, 8, 8), 100.0)
    assert metrics.ergas(ref + 10, ref, scale=2) == pytest.approx(5.0)
    x = np.zeros((2, 1, 2))
    y = np.zeros((2, 1, 2))
    x[:, 0, 0], y[:, 0, 0] = (1, 0), (0, 1)  # 90°
    x[:, 0, 1], y[:, 0, 1] = (1, 1), (1, 0)  # 45°
    assert metrics.sam(x, y) == pytest.approx(67.5)


def test_hf_ratio_sees_blur():
    rng = np.random.default_rng(1)
    x = rng.random((1, 64, 64))
    assert metrics.hf_ratio(x, x) == pytest.approx(1.0)
    blurred = metrics.gaussian_blur(np.pad(x, ((0, 0), (5, 5), (5, 5)), mode="reflect"))
    assert metrics.hf_ratio(blurred, x) < 0.2


def test_consistency_of_a_constant_is_perfect():
    hr = np.full((1, 40, 40), 77.0)
    assert metrics.consistency_psnr(hr, np.full((1, 10, 10), 77.0), 255) == math.inf


def test_downsample_matches_torch_antialiased_bicubic():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).random((3, 97, 120)).astype(np.float32)
    for h, w in [(24, 30), (39, 48), (13, 15)]:
        t = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(h, w), mode="bicubic",
                                            antialias=True, align_corners=False)[0].numpy()
        np.testing.assert_allclose(downsample(x, h, w), t, atol=1e-5)


def texture(seed=0, size=96):
    """A 3-band image with detail at every frequency (white noise, slightly smoothed), 0..255."""
    rng = np.random.default_rng(seed)
    x = rng.random((3, size, size))
    x = (x + np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2)) / 3
    return 255 * x


def box_blur(x, k):
    out = np.zeros_like(x)
    for dy in range(k):
        for dx in range(k):
            out += np.roll(np.roll(x, dy - k // 2, axis=1), dx - k // 2, axis=2)
    return out / (k * k)


def test_lsd_is_zero_for_identical_images_and_rises_with_blur_and_noise():
    hr = texture()
    assert metrics.lsd(hr, hr) == 0.0
    blurred = [metrics.lsd(box_blur(hr, k), hr) for k in (2, 3, 5)]
    assert 0 < blurred[0] < blurred[1] < blurred[2]
    rng = np.random.default_rng(1)
    noisy = [metrics.lsd(hr + rng.normal(0, s, hr.shape), hr) for s in (20, 60, 200)]
    assert 0 < noisy[0] < noisy[1] < noisy[2]


def test_lsd_by_hand_for_a_uniform_gain():
    """A gain g multiplies every bin's power by g², so LSD = 10 × |log10 g²| exactly; the mean and the
    band split do not matter (the band-mean image, mean removed)."""
    hr = texture(2)
    assert metrics.lsd(2.0 * hr, hr) == pytest.approx(10 * math.log10(4.0))
    assert metrics.lsd(hr + 17.0, hr) == pytest.approx(0.0, abs=1e-9)
    same_mean = hr[[1, 2, 0]]
    assert metrics.lsd(same_mean, hr) == pytest.approx(0.0, abs=1e-9)


def test_radial_power_uses_24_bins_from_an_eighth_to_half_a_cycle():
    img = np.zeros((64, 64))
    img[:, ::2] = 1.0  # all power at fx = 0.5 (and the mean, removed)
    power = metrics.radial_power(img)
    assert power.shape == (24,)
    assert power[-1] > 0 and np.allclose(power[:-1], 0)
    f = 13 / 60  # an exact frequency of a 60-pixel image, inside bin 5 (edges every 0.375/24 from 0.125)
    img = np.cos(2 * np.pi * f * np.arange(60))[None, :].repeat(60, axis=0)
    power = metrics.radial_power(img)
    assert int((f - 0.125) / (0.375 / 24)) == 5 and int(np.nanargmax(power)) == 5
    assert np.allclose(np.delete(power, 5), 0, atol=1e-20)


def test_correctness_on_a_constructed_case():
    """SR equal to HR is improvement, SR equal to the bicubic LR is omission, SR far from both is
    hallucination; flat pixels (below the 75th percentile of |LR↑ − HR| everywhere) are not classified."""
    rng = np.random.default_rng(3)
    hr = rng.random((3, 40, 40)) * 100
    lr_up = hr + rng.normal(0, 10, hr.shape)
    sr = hr.copy()
    sr[:, :, 10:20] = lr_up[:, :, 10:20]
    sr[:, :, 20:30] = hr[:, :, 20:30] + 200.0
    classes = metrics.correctness_map(sr, hr, lr_up)
    d_ref = np.abs(lr_up - hr).mean(axis=0)
    flat = d_ref <= np.sort(d_ref.ravel())[int(0.75 * d_ref.size) - 1]
    assert np.all(classes[:, :10][~flat[:, :10]] == 1) and np.all(classes[:, :10][flat[:, :10]] == 0)
    assert np.all(classes[:, 10:20][~flat[:, 10:20]] == 2)
    assert np.all(classes[:, 20:30] == 3)  # far from both: always above the threshold
    shares = metrics.correctness_shares(classes)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["hallucination"] == pytest.approx((classes == 3).sum() / (classes > 0).sum())
    assert math.isnan(metrics.correctness_shares(np.zeros((4, 4), np.uint8))["improvement"])


def test_correctness_scores_by_hand():
    a, b = np.array([0.5]), np.array([2.0])
    h = a + b - 1
    im, om, ha = metrics.correctness_scores(a, b)
    pull = 1 - math.exp(-0.05 * h[0])
    assert im[0] == pytest.approx(0.5 + 2.0 * pull) and om[0] == pytest.approx(2.0 + 0.5 * pull)
    assert ha[0] == pytest.approx(math.exp(-0.05 * 1.0))


def pink_texture(n: int, beta: float, seed: int) -> np.ndarray:
    """Noise with a power spectrum falling as 1/f^beta: texture that does not know any pixel grid."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    f[0, 0] = 1.0
    return np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * f ** (-beta / 2)))


def test_lattice_by_hand():
    """×4 on 64 pixels: the harmonics are bins 16 (0.25 cycles/pixel) and 32 (Nyquist). Along x a
    cosine of amplitude 1 at bin 16 (power 1/2) and one at Nyquist (power 2, twice its variance);
    along y only a cosine at bin 19, 3 bins from the harmonic: its power 1/2 is one of the 10
    adjacent bins of bin 16. Peak 2.5, background 0.05: 10·log10(50) dB."""
    n = 64
    t = np.arange(n)
    x = np.cos(2 * np.pi * 16 * t / n) + np.cos(np.pi * t)
    y = np.cos(2 * np.pi * 19 * t / n)
    img = x[None, :] + y[:, None]
    assert metrics.lattice(img, 4) == pytest.approx(10 * math.log10(50))
    assert metrics.lattice(np.stack([img, img, img]), 4) == pytest.approx(10 * math.log10(50))  # band mean
    assert metrics.lattice(img.T, 4) == pytest.approx(10 * math.log10(50))  # the axes are alike
    assert metrics.lattice_bins(n, 4) == [(16, [10, 11, 12, 13, 14, 18, 19, 20, 21, 22]), (32, [26, 27, 28, 29, 30])]


def test_lattice_of_an_lr_period_cross_hatch_is_high_and_of_noise_and_texture_near_zero():
    rng = np.random.default_rng(0)
    n = 248  # the bench's ×4 crop: 256 − 2·4
    t = np.arange(n)
    hatch = np.add.outer(np.cos(2 * np.pi * t / 4 + 0.3), np.cos(2 * np.pi * t / 4 + 1.1))
    assert metrics.lattice(hatch, 4) > 100  # nothing beside the harmonics but rounding
    texture = pink_texture(n, 2.0, 1)
    figures = [metrics.lattice(rng.normal(size=(n, n)), 4) for _ in range(5)]
    figures += [metrics.lattice(pink_texture(n, beta, seed), 4) for beta in (1.0, 2.0, 3.0) for seed in range(3)]
    assert max(abs(f) for f in figures) < 1.0
    # the same texture with a faint hatch locked to the LR pixels (5% of its variance) stands out
    faint = texture + hatch * math.sqrt(0.05 * texture.var() / hatch.var())
    assert metrics.lattice(faint, 4) > 6
    # ×3: one harmonic, 0.333 cycles/pixel; ×2: the Nyquist bin
    for scale in (2, 3):
        lines = np.add.outer(np.cos(2 * np.pi * t / scale), np.cos(2 * np.pi * t / scale))[:n - n % scale, :n - n % scale]
        assert metrics.lattice(lines, scale) > 100
        assert abs(metrics.lattice(pink_texture(n, 2.0, 2), scale)) < 1.0


def test_lattice_without_harmonics_or_power():
    rng = np.random.default_rng(1)
    assert math.isnan(metrics.lattice(rng.normal(size=(64, 64)), 1.5))  # the LR pixel frequency is above Nyquist
    assert math.isnan(metrics.lattice(np.zeros((64, 64)), 4))
    t = np.arange(64)
    assert metrics.lattice(np.cos(2 * np.pi * 19 * t / 64)[None, :] * np.ones((64, 1)), 4) < -200  # none but rounding


def test_bench_lattice_figures_are_against_the_regression_on_the_border_crop():
    """make bench's diffusion rows: the figure of SR − regression beside HR − regression, both cropped."""
    from training.bench.quality import added_details, lattice_figures

    rng = np.random.default_rng(2)
    regression = pink_texture(72, 2.0, 3) * 20 + 128
    t = np.arange(72)
    hatch = 3 * np.add.outer(np.cos(2 * np.pi * t / 4), np.cos(2 * np.pi * t / 4)) + rng.normal(0, 1, (72, 72))
    hr = regression + rng.normal(0, 3, regression.shape)
    hatch[:4] = 1000.0  # in the border crop of ceil(4): left out
    figures = lattice_figures(added_details(np.stack([regression + hatch] * 3), np.stack([hr] * 3),
                                            np.stack([regression] * 3), 4.0), 4.0)
    assert figures["lattice"] == pytest.approx(metrics.lattice(metrics.crop_border(hatch, 4), 4), abs=1e-6)
    assert figures["lattice"] > 10 and abs(figures["lattice_hr"]) < 2
