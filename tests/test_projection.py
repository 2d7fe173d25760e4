"""The consistency projection: degrading the SR gives back the LR."""
import numpy as np
import pytest

from engine import metrics
from engine.projection import degradation_rows, project
from engine.grid import Grid
from engine.registry.bicubic import Bicubic
from engine.methods import RunOptions
from engine.pipeline import Request, superresolve
from engine.resample import antialias_cubic_matrix, downsample
from tests.conftest import SAMPLE, read, write_raster


def test_whole_grid_matrix_is_the_training_degradation():
    g = Grid.whole(20, 20, 2.5)
    rows, d = degradation_rows(g.ys, 20, True, True)
    np.testing.assert_array_equal(rows, np.arange(20))
    np.testing.assert_allclose(d, antialias_cubic_matrix(50, 20), atol=1e-12)


@pytest.mark.parametrize("scale", [2.0, 2.5, 3.7, 4.0])
def test_projection_is_exact_and_only_helps(scale):
    rng = np.random.default_rng(0)
    h = 24
    hr = rng.random((3, round(h * scale), round(h * scale))).astype(np.float32)
    lr = downsample(hr, h, h)
    g = Grid.whole(h, h, scale)
    sr = Bicubic()(lr, g)
    p = project(sr, lr, g)
    assert metrics.consistency_psnr(p, lr, 1.0) > 100
    assert metrics.psnr(p, hr, 1.0) >= metrics.psnr(sr, hr, 1.0)  # the HR is consistent, so projecting moves toward it


def test_tiled_run_with_consistency(tmp_path):
    hr, _ = read(SAMPLE)
    hr = hr[:3].astype(np.float32)
    lr = downsample(hr, 128, 128)
    src = write_raster(tmp_path / "lr.tif", lr, dtype=6)  # Float32 LR: its values are the constraint
    superresolve(Request(input=src, output=str(tmp_path / "sr.tif"), scale=2, tile=48, overlap=16,
                         options=RunOptions(method="bicubic", consistency=True)))
    superresolve(Request(input=src, output=str(tmp_path / "plain.tif"), scale=2, tile=48, overlap=16,
                         options=RunOptions(method="bicubic")))
    sr, _ = read(tmp_path / "sr.tif")
    plain, _ = read(tmp_path / "plain.tif")
    assert metrics.consistency_psnr(sr, lr, 255) >= 45
    assert metrics.consistency_psnr(sr, lr, 255) > metrics.consistency_psnr(plain, lr, 255) + 10
    assert metrics.psnr(sr, hr, 255) > metrics.psnr(plain, hr, 255)
