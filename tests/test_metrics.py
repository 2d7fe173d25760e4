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
