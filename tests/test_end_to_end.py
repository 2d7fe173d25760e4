"""The bundled LCMSR on a real raster through Processing: geometry, and closer to the HR than bicubic.

The crop: resources/sample/naip_2020_crop.tif (NAIP 2020, UTM 14N, 256×256 at 5 m; fields, a
lake shore, a farmstead), bands R, G, B. Its LR is the antialiased bicubic ×2 downsampling
(10 m, 128×128, Byte, same origin), the degradation the models were trained on.
"""
import numpy as np
import pytest
from engine import metrics, modelfile
from engine.grid import Grid
from engine.methods import MethodOptions, build_method
from engine.registry import LEARNED, REGISTRY
from engine.modelfile import DEFAULT_MODEL
from engine.resample import cubic_resample, downsample
from tests.conftest import SAMPLE, read, write_raster

SCALE = 2
MARGIN_DB = 0.3


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hr, ds = read(SAMPLE)
    hr = hr[:3].astype(np.float32)
    gt = ds.GetGeoTransform()
    lr = np.clip(np.rint(downsample(hr, 128, 128)), 0, 255).astype(np.uint8)
    lr_gt = (gt[0], gt[1] * SCALE, 0.0, gt[3], 0.0, gt[5] * SCALE)
    path = write_raster(tmp_path_factory.mktemp("e2e") / "naip_lr.tif", lr, geotransform=lr_gt, epsg=26914)
    return hr, lr, path, gt


def test_bundled_model_runs_every_method_on_both_backends():
    """The bundled model loads (its weights match the card), offers every learned method of the engine's
    table, and both backends give the same pixels on a piece of the sample (≤ 1e-5, normalised units)."""
    card, tensors = modelfile.load(DEFAULT_MODEL)
    assert set(card.methods) == set(LEARNED) and card.onnx.weights_sha256 == card.weights.sha256
    assert tensors.keys() == {k for net in card.networks for k in tensors if k.startswith(net + ".")}
    hr, _ = read(SAMPLE)
    x = hr[:3, 96:136, 80:112].astype(np.float32) / 255.0
    grid = Grid.whole(40, 32, 2.5)
    for name in LEARNED:
        for steps in sorted({None, REGISTRY[name].max_steps or None}, key=lambda s: s or 0):
            torch_sr = build_method(name, MethodOptions(steps, "torch", "cpu", DEFAULT_MODEL))(x, grid, 3)
            onnx_sr = build_method(name, MethodOptions(steps, "onnx", "cpu", DEFAULT_MODEL))(x, grid, 3)
            assert torch_sr.shape == (3, 100, 80) and np.all(np.isfinite(torch_sr))
            assert np.abs(torch_sr - onnx_sr).max() <= 1e-5, (name, steps)
            # an SR of the sample, not noise: within a few DN of its bicubic upsampling on average
            assert np.abs(torch_sr - cubic_resample(x, grid.ys, grid.xs)).mean() < 0.05, (name, steps)


def run(path, out, method):
    import processing

    processing.run("latentsr:superresolve", {"INPUT": path, "SCALE": SCALE, "METHOD": method, "SEED": 0, "OUTPUT": out})
    return read(out)


def test_lcmsr_is_closer_to_hr_than_bicubic(provider, pair, tmp_path):
    hr, lr, path, gt = pair
    psnr = {}
    for name, method in (("lcmsr", 0), ("bicubic", 3)):
        sr, ds = run(path, str(tmp_path / f"{name}.tif"), method)
        assert sr.shape == (3, 256, 256) and sr.dtype == np.uint8
        assert ds.GetGeoTransform() == pytest.approx(gt)
        assert ds.GetSpatialRef().GetAuthorityCode(None) == "26914"
        psnr[name] = metrics.psnr(metrics.crop_border(sr, SCALE), metrics.crop_border(hr, SCALE), 255)
    assert psnr["lcmsr"] > psnr["bicubic"] + MARGIN_DB, psnr


@pytest.mark.parametrize("method", ["lcmsr", "e2diffsr"])
def test_uncertainty_follows_texture(pair, tmp_path, method):
    """Four full samples (D = 1) of the bundled model: their per-pixel std is clearly above zero on the
    crop's fields and farmstead, and near zero on a flat patch of the crop's mean colour beside them.
    (The bundle's default D is 0, where the samples are the same.)"""
    from engine.methods import RunOptions
    from engine.pipeline import Request, superresolve

    _, lr, _, gt = pair
    scene = lr.copy()
    scene[:, :, 64:] = np.rint(lr.reshape(3, -1).mean(axis=1))[:, None, None]  # right half flat
    path = write_raster(tmp_path / "half_flat.tif", scene, geotransform=(gt[0], gt[1] * SCALE, 0.0, gt[3], 0.0, gt[5] * SCALE),
                        epsg=26914)
    superresolve(Request(input=path, output=str(tmp_path / "mean.tif"), scale=SCALE,
                         uncertainty=str(tmp_path / "std.tif"),
                         options=RunOptions(method=method, samples=4, seed=3, detail=1.0)))
    std, _ = read(tmp_path / "std.tif")
    textured, flat = std[:, 8:-8, 8:112].mean(), std[:, 8:-8, 144:-8].mean()  # 16 output pixels off the seam
    assert flat < 0.5, (textured, flat)  # DN: below half a grey level
    assert textured > 0.02 and textured > 4 * flat, (textured, flat)
