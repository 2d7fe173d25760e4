"""The faithful ↔ detailed control: D = 0 is the deterministic regression latent, D = 1 a full sample,
the blend in between; tiles agree at every D; the CLI, Processing and the model card's default."""
import json
import logging
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal
from PIL import Image

from engine import latent, metrics, modelfile
from engine.card import MethodSpec
from engine.errors import LatentSRError
from engine.grid import Grid
from engine.methods import (MethodOptions, RunOptions, build_method, card_default_detail, check_detail, default_detail,
                            from_bundle)
from engine.pipeline import Request, superresolve
from engine.registry import REGISTRY
from engine.resample import downsample

from tests.conftest import ROOT, write_raster
from tests.test_models import bundle, lr, model_dir, tiled_run  # noqa: F401 (fixtures)

DETAILS = (0.0, 0.25, 0.5, 1.0)
UCMERCED_CROPS = f"{ROOT}/tests/data/ucmerced_crops.png"


def test_blend_is_the_straight_line_between_the_latents():
    z_det, z_sample = np.array([1.0, -2.0]), np.array([3.0, 2.0])
    assert np.array_equal(latent.blend(z_det, z_sample, 0.0), z_det)
    assert np.array_equal(latent.blend(z_det, z_sample, 1.0), z_sample)
    assert np.allclose(latent.blend(z_det, z_sample, 0.25), [1.5, -1.0])


def test_detail_zero_skips_the_sampler():
    calls = []

    def denoiser(inputs):
        calls.append(inputs.t_frac)
        return np.zeros_like(inputs.z_t)

    cond = np.ones((1, 4, 2, 2), np.float32)
    inv = np.full((1, 1), 0.5, np.float32)
    for name in ("lcmsr", "e2diffsr"):
        assert latent.sample_latent(REGISTRY[name], MethodSpec(name), 2, denoiser, cond, inv, lambda k: np.zeros_like(cond), 0.0) is cond
    assert calls == []
    latent.sample_latent(REGISTRY["lcmsr"], MethodSpec("lcmsr"), 2, denoiser, cond, inv, lambda k: np.zeros_like(cond), 0.5)
    assert len(calls) == 2


def test_the_denoiser_sees_the_features_and_the_blend_only_the_guess():
    """A condition with feature channels (the card's ``features``): the denoiser gets all of it, D = 0
    returns its latent guess, and the blend runs between that guess and the sample."""
    seen = []

    def denoiser(inputs):
        seen.append(inputs.cond.shape[1])
        return np.full_like(inputs.z_t, 2.0)

    cond = np.concatenate([np.ones((1, 4, 2, 2), np.float32), np.full((1, 3, 2, 2), 9.0, np.float32)], 1)
    inv = np.full((1, 1), 0.5, np.float32)
    spec = MethodSpec("e2diffsr", latent=4, features=3, betas=(0.5,), eta=0.0, prediction="x0")
    assert np.array_equal(latent.sample_latent(REGISTRY["e2diffsr"], spec, 1, denoiser, cond, inv, np.zeros_like, 0.0), cond[:, :4])
    out = latent.sample_latent(REGISTRY["e2diffsr"], spec, 1, denoiser, cond, inv, lambda k: np.zeros((1, 4, 2, 2), np.float32), 0.5)
    assert seen == [7] and np.allclose(out, 1.5)  # halfway between the guess (1) and the z0 prediction (2)


def test_a_spread_scales_the_sampled_residual():
    """A card with ``spread``: the sampler draws the residual standardised per cell, and the latent is
    the guess plus the spread (the exp of the condition's next channels) times it; D = 0 is the guess."""
    guess, log_spread = np.ones((1, 2, 1, 2), np.float32), np.log(np.array([[[[0.5, 2.0]], [[1.0, 4.0]]]], np.float32))
    cond = np.concatenate([guess, log_spread, np.full((1, 3, 1, 2), 7.0, np.float32)], 1)
    spec = MethodSpec("e2diffsr", latent=2, features=3, spread=True, betas=(0.5,), eta=0.0, prediction="x0")
    assert np.array_equal(latent.latent_guess(cond, spec), guess)

    def denoiser(inputs):
        return np.full_like(inputs.z_t, -1.0)

    out = latent.sample_latent(REGISTRY["e2diffsr"], spec, 1, denoiser, cond, np.ones((1, 1), np.float32), np.zeros_like, 1.0)
    assert np.allclose(out, [[[[0.5, -1.0]], [[0.0, -3.0]]]])  # 1 − spread


@pytest.mark.parametrize("name", ["lcmsr", "e2diffsr"])
def test_detail_zero_is_deterministic(bundle, name):
    method = from_bundle(name, *bundle, device="cpu", detail=0.0)
    assert method.deterministic
    x, grid = lr(seed=1), Grid.whole(23, 17, 2.5)
    assert np.array_equal(method(x, grid, 1), method(x, grid, 2))


def test_lcmsr_at_detail_zero_is_regression(bundle):
    """The bundle's regression decodes the LCMSR conditioning net's latent: LCMSR at D = 0 is that path. Its
    latent grid is aligned to the denoiser's multiple of 4 cells (regression's to 1), so the two agree to
    the tolerance that tiles agree to, not bit for bit."""
    assert bundle[0].methods["regression"].condition == bundle[0].methods["lcmsr"].condition
    x, grid = lr(seed=2), Grid.whole(23, 17, 3.0)
    lcmsr = from_bundle("lcmsr", *bundle, device="cpu", detail=0.0)(x, grid, 5)
    regression = from_bundle("regression", *bundle, device="cpu")(x, grid, 5)
    assert np.abs(lcmsr - regression).max() < 5e-4


@pytest.mark.parametrize("name", ["lcmsr", "e2diffsr"])
def test_full_detail_samples_differ_and_the_blend_lies_between(bundle, name):
    x, grid = lr(seed=3), Grid.whole(23, 17, 2.0)
    full = from_bundle(name, *bundle, device="cpu", detail=1.0)
    a, b = full(x, grid, 1), full(x, grid, 2)
    assert np.abs(a - b).max() > 1e-5  # a tiny random decoder barely reacts to its latent (about 1e-4)
    faithful = from_bundle(name, *bundle, device="cpu", detail=0.0)(x, grid, 1)
    half = from_bundle(name, *bundle, device="cpu", detail=0.5)(x, grid, 1)
    # the latent is halfway; the decoder is smooth, so the output moves part of the way too
    assert 0 < np.abs(half - faithful).mean() < np.abs(a - faithful).mean()


@pytest.mark.parametrize("detail", DETAILS)
@pytest.mark.parametrize("name", ["lcmsr", "e2diffsr"])
def test_tiled_equals_untiled_at_every_detail(bundle, name, detail):
    method = from_bundle(name, *bundle, device="cpu", detail=detail)
    x = lr(h=64, w=56, seed=3)
    whole = method(x, Grid.whole(64, 56, 2.5), 5)
    tiled = tiled_run(x, 2.5, lambda iy, ix: lambda t, g: method(t, g, 5), context=method.halo(2.5))
    assert np.abs(tiled - whole).max() < 5e-4


@pytest.mark.parametrize("value", [math.nan, -0.01, 1.01, math.inf, "x", None])
def test_bad_detail_is_refused(value):
    with pytest.raises(LatentSRError, match="detail must be"):
        check_detail(value)


def test_default_detail_comes_from_the_card_with_a_fallback(bundle, model_dir, tmp_path):
    card, tensors = bundle
    assert default_detail("lcmsr", card) == 1.0 and default_detail("regression", card) is None
    edited = card.updated(methods=dict(card.to_json()["methods"], lcmsr=dict(card.methods["lcmsr"].to_json(),
                                                                              detail_default=0.3)))
    assert default_detail("lcmsr", edited) == 0.3
    assert from_bundle("lcmsr", edited, tensors, device="cpu").detail == 0.3
    folder = tmp_path / "tiny"
    shutil.copytree(model_dir, folder)
    card_path = folder / "model.json"
    on_disk = json.loads(card_path.read_text())
    on_disk["methods"]["e2diffsr"]["detail_default"] = 0.6
    card_path.write_text(json.dumps(on_disk))
    assert card_default_detail("e2diffsr", str(folder)) == 0.6
    assert build_method("e2diffsr", MethodOptions(model=str(folder), backend="torch")).detail == 0.6
    on_disk["methods"]["e2diffsr"]["detail_default"] = 7
    card_path.write_text(json.dumps(on_disk))
    with pytest.raises(LatentSRError, match="detail must be between 0 and 1"):
        build_method("e2diffsr", MethodOptions(model=str(folder), backend="torch"))


def test_regression_and_bicubic_ignore_detail_and_say_so(model_dir, caplog):
    x, grid = lr(seed=4), Grid.whole(23, 17, 2.0)
    with caplog.at_level(logging.INFO, logger="engine"):
        plain = build_method("regression", MethodOptions(model=model_dir, backend="torch"))(x, grid)
        given = build_method("regression", MethodOptions(model=model_dir, backend="torch", detail=0.7))(x, grid)
        build_method("bicubic", MethodOptions(detail=0.7))
    assert np.array_equal(plain, given)
    ignored = [r.getMessage() for r in caplog.records if "ignores detail" in r.getMessage()]
    assert any(m.startswith("regression") for m in ignored) and any(m.startswith("bicubic") for m in ignored)


def test_uncertainty_scales_with_detail_and_is_zero_at_zero(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    src = write_raster(tmp_path / "in.tif", (rng.random((3, 24, 20)) * 255).astype(np.uint8))
    stds = {}
    for detail in (0.0, 0.5, 1.0):
        out, unc = tmp_path / f"o{detail}.tif", tmp_path / f"u{detail}.tif"
        superresolve(Request(input=src, output=str(out), scale=2.0, uncertainty=str(unc),
                             options=RunOptions(method="lcmsr", detail=detail, samples=3, model=model_dir,
                                                backend="torch")))
        stds[detail] = float(gdal.Open(str(unc)).ReadAsArray().mean())
    assert stds[0.0] == 0.0 < stds[0.5] < stds[1.0]


def test_cli_detail(model_dir, tmp_path):
    rng = np.random.default_rng(1)
    src = write_raster(tmp_path / "in.tif", (rng.random((3, 20, 20)) * 255).astype(np.uint8))

    def run(detail, seed):
        out = tmp_path / f"o-{detail}-{seed}.tif"
        r = subprocess.run([sys.executable, "-m", "engine", "superresolve", src, str(out), "--scale", "2",
                            "--method", "lcmsr", "--model", model_dir, "--detail", str(detail), "--seed", str(seed)],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return gdal.Open(str(out)).ReadAsArray()

    assert np.array_equal(run(0, 1), run(0, 2))
    assert not np.array_equal(run(1, 1), run(1, 2))


def test_detail_through_processing(provider, model_dir, tmp_path):
    import processing

    rng = np.random.default_rng(2)
    src = write_raster(tmp_path / "in.tif", (rng.random((3, 20, 20)) * 255).astype(np.uint8))

    def run(detail, seed):
        out = str(tmp_path / f"p-{detail}-{seed}.tif")
        processing.run("latentsr:superresolve", {"INPUT": src, "SCALE": 2, "METHOD": 0, "DETAIL": detail, "SEED": seed,
                                                 "MODEL": model_dir, "BACKEND": 1, "OUTPUT": out})
        return gdal.Open(out).ReadAsArray()

    assert np.array_equal(run(0.0, 1), run(0.0, 2))
    assert not np.array_equal(run(1.0, 1), run(1.0, 2))
    alg = provider.algorithm("superresolve")
    assert "faithful" in alg.parameterDefinition("DETAIL").help()


def ucmerced_crop() -> tuple[np.ndarray, np.ndarray]:
    """A real 256×64 UC Merced strip (HR, 8-bit C×H×W) and its ×4 LR in 0..1."""
    hr = np.asarray(Image.open(UCMERCED_CROPS).convert("RGB")).transpose(2, 0, 1)
    return hr, downsample(hr.astype(np.float32) / 255.0, hr.shape[1] // 4, hr.shape[2] // 4)


SHARPER_BY = 1.0  # dB of LSD: a full sample must be clearly closer to HR's spectrum than the regression latent


def test_full_detail_is_sharper_than_detail_zero_on_a_real_crop():
    hr, low = ucmerced_crop()
    grid = Grid.whole(low.shape[1], low.shape[2], 4.0)
    scores = {}
    for detail in (0.0, 1.0):
        method = build_method("lcmsr", MethodOptions(detail=detail, device="cpu"))
        sr = np.clip(np.rint(method(low, grid, 3) * 255), 0, 255)
        scores[detail] = metrics.lsd(metrics.crop_border(sr, 4), metrics.crop_border(hr.astype(np.float64), 4))
    assert scores[1.0] < scores[0.0] - SHARPER_BY, scores


def scored(psnr, lsd):
    """A bench result at ×4 (training.bench.quality's results entry) with this PSNR and LSD."""
    from training.bench import quality
    return {"scales": {str(quality.PD_SCALE): {"psnr": psnr, "lsd": lsd}}}


def test_bench_writes_the_suggested_detail_into_the_card(model_dir, tmp_path):
    """make bench's --set-default: the lowest-LSD detail that keeps +1.0 dB over bicubic at ×4, per
    method, among the sweep's rows and those its search added."""
    from training.bench import quality

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    results = {quality.Row("bicubic").label: scored(25.0, 12.0)}
    sweep = list(quality.SWEEP)
    for d, (psnr, lsd) in zip(quality.DETAILS, [(26.5, 9.0), (26.2, 7.0), (25.9, 6.0), (25.5, 5.0), (25.0, 4.0)]):
        results[quality.Row("lcmsr", 1, d).label] = scored(psnr, lsd)
    for d in quality.DETAILS:  # E²DiffSR never keeps +1.0 dB: its most faithful detail
        results[quality.Row("e2diffsr", 4, d).label] = scored(25.9 - d, 9.0 - d)
    quality.set_default_detail(results, sweep, str(folder))
    assert json.loads((folder / "model.json").read_text())["methods"]["lcmsr"]["detail_default"] == 0.25
    sweep.append(quality.Row("lcmsr", 1, 0.37))  # a row of the search that keeps the gain at a lower LSD
    results[sweep[-1].label] = scored(26.05, 6.5)
    quality.set_default_detail(results, sweep, str(folder))
    card = json.loads((folder / "model.json").read_text())
    assert card["methods"]["lcmsr"]["detail_default"] == 0.37
    assert card["methods"]["e2diffsr"]["detail_default"] == 0.0
    assert card_default_detail("lcmsr", str(folder)) == 0.37


def test_bench_searches_the_default_detail_between_the_sweep_steps():
    """The bench's search (refine_detail): regula falsi on ΔPSNR inside the sweep's bracket of +1.0 dB,
    on a 0.01 grid, until no step is left inside it; no search without a bracket."""
    from training.bench import quality

    def gain(d):  # ΔPSNR over bicubic falling with D, not linearly
        return 1.6 - 2.2 * d + 0.6 * d * d

    results = {quality.Row("bicubic").label: scored(25.0, 12.0)}
    sweep = list(quality.SWEEP)
    for d in quality.DETAILS:
        results[quality.Row("lcmsr", 1, d).label] = scored(25.0 + gain(d), 9.0 - 5 * d)
    tried = []
    while (d := quality.refine_detail(results, sweep, "lcmsr")) is not None:
        assert 0.25 < d < 0.5 and d not in tried and abs(d * 100 - round(d * 100)) < 1e-9
        tried.append(d)
        sweep.append(quality.Row("lcmsr", 1, d))
        results[sweep[-1].label] = scored(25.0 + gain(d), 9.0 - 5 * d)
    # the exact crossing is D = 0.2967: the line between 0.25 and 0.5 lands on 0.3, the next on 0.29
    assert tried == [0.3, 0.29]
    assert quality.suggested_detail(results, sweep, "lcmsr") == 0.29
    assert gain(0.29) >= quality.TARGET_GAIN > gain(0.3)
    for d in quality.DETAILS:  # every D keeps the gain, or none does: nothing to search
        results[quality.Row("e2diffsr", 4, d).label] = scored(27.0 - d, 9.0 - d)
    assert quality.refine_detail(results, quality.SWEEP, "e2diffsr") is None
    for d in quality.DETAILS:
        results[quality.Row("e2diffsr", 4, d).label] = scored(25.9 - d, 9.0 - d)
    assert quality.refine_detail(results, quality.SWEEP, "e2diffsr") is None


def test_bench_calibrates_each_diffusion_method_on_its_own_samples(model_dir, tmp_path):
    """The quality bench's calibration runs per diffusion method (LCMSR 1 step, E²DiffSR 4 steps, 4
    samples at ×4, D = 1): the correlation pooled over the pixels of their own samples, and the
    report has a line for each."""
    from training.bench import quality

    rng = np.random.default_rng(3)
    img = np.clip(rng.normal(128, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
    (tmp_path / "val").mkdir()
    Image.fromarray(img).save(tmp_path / "val" / "a.png")
    files = [tmp_path / "val" / "a.png"]
    found = [quality.calibration(files, model_dir, "torch", name) for name, *_ in quality.CALIBRATIONS]
    assert [c["method"] for c in found] == ["lcmsr (1 step, D = 1)", "e2diffsr (4 steps, D = 1)"]
    for c in found:
        assert c["samples"] == 4 and c["scale"] == 4.0 and -1 <= c["pooled"] <= 1 and c["mean_std"] > 0
    assert found[0]["pooled"] != found[1]["pooled"]
    lines = [line for line in quality.calibration_lines(found) if "samples at ×4: correlation" in line]
    assert [line.split(",")[0] for line in lines] == ["lcmsr (1 step", "e2diffsr (4 steps"]
    assert f"**{found[1]['pooled']:.3f}**" in lines[1]


def test_bench_writes_its_measures_into_the_card(model_dir, tmp_path):
    """make bench's --set-default also records the run's PSNR, ΔPSNR and LSD per row and scale in the card."""
    from training.bench import quality

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    results = {quality.Row("bicubic").label: {"scales": {"2.0": {"psnr": 30.0, "lsd": 7.0}, "4.0": {"psnr": 25.0, "lsd": 12.0}}},
               quality.Row("lcmsr", 1, 1.0).label: {"scales": {"4.0": {"psnr": 24.5, "lsd": 5.25}}},
               "calibration": [{"method": "lcmsr (1 step, D = 1)", "samples": 4, "scale": 4.0, "pooled": 0.5,
                                "per_image_median": 0.4, "mean_std": 6.0},
                               {"method": "e2diffsr (4 steps, D = 1)", "samples": 4, "scale": 4.0, "pooled": 0.375,
                                "per_image_median": 0.25, "mean_std": 5.0}]}
    quality.write_card_metrics(quality.card_metrics(results, [2.0, 4.0], 42, "make bench"), str(folder))
    m = json.loads((folder / "model.json").read_text())["metrics"]
    assert m["by_scale"]["x4"]["lcmsr (1 step, D = 1)"] == {"psnr_db": 24.5, "lsd_db": 5.25, "delta_psnr_db": -0.5}
    assert m["by_scale"]["x2"]["bicubic"]["delta_psnr_db"] == 0.0
    assert [c["pooled"] for c in m["uncertainty_calibration"]] == [0.5, 0.375] and "42" in m["protocol"]
    card, tensors = modelfile.load(str(folder))  # the weights' checksum still holds
    assert tensors and card.to_json()["metrics"] == m
