"""SAMPLES / OUTPUT_UNCERTAINTY: the mean of K diffusion samples and their per-pixel std."""
import numpy as np
import pytest

from engine.errors import LatentSRError
from engine.pipeline import superresolve
from engine.render import sample_seeds
from tests.conftest import read, request, write_raster
from training.bundle import random_bundle, write


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(write(tmp_path_factory.mktemp("models") / "tiny", *random_bundle("tiny", seed=1)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rng = np.random.default_rng(3)
    data = rng.integers(1, 255, (3, 40, 56)).astype(np.uint8)
    data[:, :6, :6] = 0  # nodata corner
    return write_raster(tmp_path_factory.mktemp("src") / "in.tif", data, nodata=0)


def run(source, out, model_dir, **kw):
    return superresolve(request(input=source, output=str(out), scale=2.5, method="lcmsr", model=model_dir, **kw))


def test_mean_and_std_of_samples(tmp_path, source, model_dir):
    run(source, tmp_path / "mean.tif", model_dir, samples=3, seed=7, uncertainty=str(tmp_path / "std.tif"))
    mean, mds = read(tmp_path / "mean.tif")
    std, sds = read(tmp_path / "std.tif")
    assert mean.shape == std.shape == (3, 100, 140) and mean.dtype == np.uint8 and std.dtype == np.float32
    assert sds.GetGeoTransform() == mds.GetGeoTransform()
    assert np.isnan(std[:, :10, :10]).all() and (mean[:, :10, :10] == 0).all()
    valid = std[:, 20:, 20:]
    assert np.isfinite(valid).all() and (valid >= 0).all() and valid.max() > 0
    singles = []
    for k, seed in enumerate(sample_seeds(7, 3)):
        run(source, tmp_path / f"s{k}.tif", model_dir, seed=seed, tile=4096)
        singles.append(read(tmp_path / f"s{k}.tif")[0].astype(float))
    assert np.abs(np.mean(singles, axis=0) - mean)[:, 20:, 20:].max() <= 1.0  # 8-bit rounding of each


def test_uncertainty_is_seamless_across_tiles(tmp_path, source, model_dir):
    run(source, tmp_path / "a.tif", model_dir, samples=2, uncertainty=str(tmp_path / "a_std.tif"), tile=4096, overlap=0)
    run(source, tmp_path / "b.tif", model_dir, samples=2, uncertainty=str(tmp_path / "b_std.tif"), tile=48, overlap=40)  # margin = context + fill: exact
    a, _ = read(tmp_path / "a_std.tif")
    b, _ = read(tmp_path / "b_std.tif")
    ok = np.isfinite(a)
    assert (np.isfinite(b) == ok).all()
    np.testing.assert_allclose(b[ok], a[ok], atol=2e-2 * np.nanmax(a))


@pytest.mark.parametrize("kw,message", [
    (dict(method="bicubic", samples=2), "deterministic"),
    (dict(samples=1, uncertainty="std.tif"), "at least 2 samples"),
    (dict(samples=0), "at least 1"),
])
def test_bad_sample_requests(tmp_path, source, model_dir, kw, message):
    kw = dict(kw)
    if "uncertainty" in kw:
        kw["uncertainty"] = str(tmp_path / kw["uncertainty"])
    method = kw.pop("method", "lcmsr")
    with pytest.raises(LatentSRError, match=message):
        superresolve(request(input=source, output=str(tmp_path / "o.tif"), scale=2, method=method, model=model_dir,
                             **kw))
    assert not list(tmp_path.iterdir())
