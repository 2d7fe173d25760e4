"""latentsr:evaluate and `python -m engine evaluate`: metrics by hand, both modes, outputs, errors."""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from osgeo import gdal

from engine import evaluate, metrics
from engine.errors import LatentSRError
from engine.evaluate import EvaluateRequest
from engine.methods import RunOptions
from engine.resample import downsample
from tests.conftest import ROOT, read, write_raster

FLOAT32 = gdal.GDT_Float32


def hand_case(tmp_path):
    """2 bands 8×8 Byte, nodata 0. HR = (100, 50); SR = (110, 50) inside the 2-pixel border that scale 2
    crops; the border is garbage, and HR band 1 is nodata at (4, 4), where the SR is garbage too."""
    hr = np.stack([np.full((8, 8), 100), np.full((8, 8), 50)]).astype(np.uint8)
    hr[0, 4, 4] = 0
    sr = np.full((2, 8, 8), 250, np.uint8)
    sr[0, 2:6, 2:6], sr[1, 2:6, 2:6] = 110, 50
    sr[0, 4, 4] = 200
    return write_raster(tmp_path / "sr.tif", sr, nodata=0), write_raster(tmp_path / "hr.tif", hr, nodata=0)


def test_metrics_by_hand(tmp_path):
    sr, hr = hand_case(tmp_path)
    report = evaluate.evaluate(EvaluateRequest(reference=hr, sr=sr, scale=2))
    b1, b2 = report.main.bands
    overall = report.main.overall
    assert (report.data_range, report.border) == (255, 2)
    # band 1: 15 valid pixels, each 10 off; band 2: 16 exact pixels
    assert b1["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert b2["psnr"] == math.inf
    assert overall["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / (15 * 100 / 31)))
    # ERGAS = 100/scale × RMSE/mean: band 1 50 × 10/100, band 2 0; overall 50 × sqrt((0.1² + 0) / 2)
    assert b1["ergas"] == pytest.approx(5.0) and b2["ergas"] == 0
    assert overall["ergas"] == pytest.approx(50 * math.sqrt(0.01 / 2))
    # SAM: the angle between (110, 50) and (100, 50) on the 15 pixels valid in both bands
    assert overall["sam"] == pytest.approx(math.degrees(math.atan(50 / 100) - math.atan(50 / 110)))
    assert math.isnan(b1["sam"])
    assert math.isnan(overall["ssim"])  # a 4×4 crop is smaller than SSIM's 11×11 window
    assert math.isnan(overall["hf_ratio"])  # a constant reference has no high-frequency energy


def test_consistency_and_scale_from_the_lr_by_hand(tmp_path):
    hr = np.stack([np.full((8, 8), 100), np.full((8, 8), 50)]).astype(np.uint8)
    sr = write_raster(tmp_path / "sr.tif", hr + np.array([10, 0], np.uint8)[:, None, None])
    lr = write_raster(tmp_path / "lr.tif", hr[:, :4, :4])
    report = evaluate.evaluate(EvaluateRequest(reference=write_raster(tmp_path / "hr.tif", hr), sr=sr, lr=lr))
    assert report.scale == 2  # 8 / 4
    b1, b2 = report.main.bands
    # downsample(constant) is the constant: 110 against 100, and 50 against 50
    assert b1["consistency_psnr"] == pytest.approx(20 * math.log10(25.5))
    assert b2["consistency_psnr"] > 200  # exact up to the rounding of the kernel weights
    assert report.main.overall["consistency_psnr"] == pytest.approx(10 * math.log10(255 ** 2 / 50))
    assert report.main.overall["ergas"] == pytest.approx(50 * math.sqrt(0.01 / 2))


def test_ssim_and_hf_by_hand(tmp_path):
    hr = np.full((1, 32, 32), 100, np.uint8)
    report = evaluate.evaluate(EvaluateRequest(reference=write_raster(tmp_path / "hr.tif", hr),
                                               sr=write_raster(tmp_path / "sr.tif", hr + 20), scale=2))
    c1 = (0.01 * 255) ** 2
    assert report.main.overall["ssim"] == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))
    texture = np.random.default_rng(0).random((1, 32, 32)) * 100 + 50
    sharper = 2 * (texture - texture.mean()) + texture.mean()  # twice the amplitude: four times the energy
    report = evaluate.evaluate(EvaluateRequest(reference=write_raster(tmp_path / "t.tif", texture, FLOAT32),
                                               sr=write_raster(tmp_path / "s.tif", sharper, FLOAT32), scale=2))
    assert report.main.overall["hf_ratio"] == pytest.approx(4.0, rel=1e-5)
    assert report.data_range == pytest.approx(float(texture.astype(np.float32).max() - texture.astype(np.float32).min()))


def test_overall_equals_all_metrics_without_nodata(tmp_path):
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (3, 40, 40)).astype(np.uint8)
    sr = np.clip(hr + rng.normal(0, 12, hr.shape), 0, 255).astype(np.uint8)
    lr = np.rint(downsample(hr.astype(np.float32), 16, 16)).clip(0, 255).astype(np.uint8)
    report = evaluate.evaluate(EvaluateRequest(reference=write_raster(tmp_path / "hr.tif", hr),
                                               sr=write_raster(tmp_path / "sr.tif", sr),
                                               lr=write_raster(tmp_path / "lr.tif", lr), scale=2.5))
    expected = metrics.all_metrics(sr.astype(np.float64), hr.astype(np.float64), lr.astype(np.float64), 2.5, 255)
    for key, value in expected.items():
        assert report.main.overall[key] == pytest.approx(value, rel=1e-9), key


def test_difference_raster_and_html(tmp_path):
    rng = np.random.default_rng(2)
    hr = (rng.random((2, 30, 36)) * 1000).astype(np.float32)
    sr = hr + rng.normal(0, 5, hr.shape).astype(np.float32)
    hr[1, 3, 4] = np.nan
    sr[0, 10, 11] = -9999
    gt = (300000.0, 2.0, 0.0, 5000000.0, 0.0, -2.0)
    sr_path = write_raster(tmp_path / "sr.tif", sr, FLOAT32, nodata=-9999, geotransform=gt, descriptions=["red", "nir"])
    hr_path = write_raster(tmp_path / "hr.tif", hr, FLOAT32, geotransform=gt)
    html, diff = tmp_path / "report.html", tmp_path / "diff.tif"
    report = evaluate.evaluate(EvaluateRequest(reference=hr_path, sr=sr_path, scale=3, html=str(html),
                                               difference=str(diff)))
    assert (report.html, report.difference) == (str(html), str(diff))
    values, ds = read(diff)
    assert ds.GetRasterBand(1).DataType == FLOAT32 and math.isnan(ds.GetRasterBand(1).GetNoDataValue())
    assert ds.GetGeoTransform() == gt and ds.GetProjection() == gdal.Open(sr_path).GetProjection()
    assert np.isnan(values[1, 3, 4]) and np.isnan(values[0, 10, 11])
    ok = np.isfinite(hr) & (sr != -9999)
    np.testing.assert_allclose(values[ok], (sr - hr)[ok], atol=1e-4)
    assert np.isfinite(values).sum() == ok.sum()
    text = html.read_text(encoding="utf-8")
    assert "<table" in text and "PSNR (dB)" in text and "band 2 (nir)" in text and "overall" in text
    assert f"{report.main.overall['psnr']:.2f}" in text
    assert report.data_range == pytest.approx(float(np.nanmax(hr) - np.nanmin(hr)))
    ds = None


def test_refuses_mismatches_and_big_rasters(tmp_path, monkeypatch):
    a = write_raster(tmp_path / "a.tif", np.ones((3, 20, 20), np.uint8))
    b = write_raster(tmp_path / "b.tif", np.ones((3, 20, 21), np.uint8))
    c = write_raster(tmp_path / "c.tif", np.ones((2, 20, 20), np.uint8))
    for req, fragment in [(EvaluateRequest(reference=a, sr=b), "must be on the same grid"),
                          (EvaluateRequest(reference=a, sr=c), "select the same number of bands"),
                          (EvaluateRequest(reference=a, sr=a, bands=[4]), "band 4 does not exist"),
                          (EvaluateRequest(reference=a, sr=a, lr=b), "must be smaller than the reference"),
                          (EvaluateRequest(reference=a), "needs a scale"),
                          (EvaluateRequest(reference=a, scale=9), "at most 8"),
                          (EvaluateRequest(reference=a, scale=8), "too small for a border crop")]:
        with pytest.raises(LatentSRError, match=fragment):
            evaluate.evaluate(req)
    monkeypatch.setattr(evaluate, "MAX_VALUES", 1000)
    with pytest.raises(LatentSRError, match="accepts at most 1,000"):
        evaluate.evaluate(EvaluateRequest(reference=a, sr=a))


def test_degraded_size():
    assert [evaluate.degraded_size(n, s) for n, s in [(256, 2.5), (100, 3), (44, 2.5), (64, 7.3)]] == [102, 33, 16, 8]


def texture(shape, seed=4):
    """A smooth Byte texture, so bicubic does clearly better than noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((shape[0], shape[1] // 4 + 2, shape[2] // 4 + 2)).astype(np.float32) * 200 + 20
    up = np.kron(coarse, np.ones((4, 4), np.float32))[:, :shape[1], :shape[2]]
    return np.rint(metrics.gaussian_blur(np.pad(up, ((0, 0), (5, 5), (5, 5)), mode="edge"))).astype(np.uint8)


def test_degradation_mode_with_bicubic(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    hr = write_raster(tmp_path / "hr.tif", texture((3, 44, 50)))
    diff = tmp_path / "diff.tif"
    report = evaluate.evaluate(EvaluateRequest(reference=hr, scale=2.5, difference=str(diff),
                                               options=RunOptions(method="bicubic")))
    assert report.mode == "degradation" and [r.label for r in report.rows] == ["bicubic"]
    assert "top-left 50×40" in report.notes[0] and "20×16" in report.notes[0]
    overall = report.main.overall
    assert 25 < overall["psnr"] < 60 and 0.5 < overall["ssim"] <= 1 and overall["hf_ratio"] < 1
    assert overall["consistency_psnr"] > overall["psnr"] - 10
    values, ds = read(diff)
    assert values.shape == (3, 40, 50) and ds.GetGeoTransform() == gdal.Open(hr).GetGeoTransform()
    assert list(scratch.iterdir()) == []  # the LR and SR temporaries are gone
    ds = None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from training.bundle import random_bundle, write

    return str(write(tmp_path_factory.mktemp("models") / "tiny", *random_bundle("tiny", seed=1)))


def test_algorithm_parameters(provider):
    alg = provider.algorithm("evaluate")
    names = [p.name() for p in alg.parameterDefinitions()]
    for name in ("INPUT", "REFERENCE", "LR", "SCALE", "METHOD", "BANDS", "STEPS", "DETAIL", "SEED", "OUTPUT_HTML",
                 "OUTPUT_DIFFERENCE", "OUTPUT_CORRECTNESS"):
        assert name in names
        assert alg.parameterDefinition(name).help()
    assert alg.parameterDefinition("METHOD").options() == provider.algorithm("superresolve").parameterDefinition(
        "METHOD").options()
    outputs = {o.name(): o.type() for o in alg.outputDefinitions()}
    for name in ("PSNR", "SSIM", "ERGAS", "SAM", "CONSISTENCY_PSNR", "HF_RATIO", "LSD", "IMPROVEMENT", "OMISSION",
                 "HALLUCINATION"):
        assert outputs[name] == "outputNumber"
    assert outputs["OUTPUT_HTML"] == "outputHtml"


def test_processing_reference_mode(provider, tmp_path):
    import processing

    sr, hr = hand_case(tmp_path)
    html, diff = str(tmp_path / "r.html"), str(tmp_path / "d.tif")
    result = processing.run("latentsr:evaluate", {"INPUT": sr, "REFERENCE": hr, "SCALE": 2, "OUTPUT_HTML": html,
                                                  "OUTPUT_DIFFERENCE": diff})
    assert result["OUTPUT_HTML"] == html and result["OUTPUT_DIFFERENCE"] == diff
    assert result["PSNR"] == pytest.approx(10 * math.log10(255 ** 2 / (15 * 100 / 31)))
    assert result["ERGAS"] == pytest.approx(50 * math.sqrt(0.01 / 2))
    assert result["SSIM"] is None and result["HF_RATIO"] is None  # not available on this tiny constant raster
    assert "<table" in open(html, encoding="utf-8").read()
    values, _ = read(diff)
    assert values[0, 3, 3] == 10 and np.isnan(values[0, 4, 4])


def test_processing_degradation_mode_with_a_model(provider, tmp_path, model_dir):
    import processing

    hr = write_raster(tmp_path / "hr.tif", texture((3, 40, 40)))
    html = str(tmp_path / "r.html")
    classes = str(tmp_path / "c.tif")
    result = processing.run("latentsr:evaluate", {"REFERENCE": hr, "SCALE": 2, "METHOD": 2, "MODEL": model_dir,
                                                  "OUTPUT_HTML": html, "OUTPUT_CORRECTNESS": classes})
    text = open(html, encoding="utf-8").read()
    assert "LSD (dB)" in text and "Hallucination" in text
    values, ds = read(classes)
    assert result["OUTPUT_CORRECTNESS"] == classes and ds.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert set(np.unique(values)) <= {0, 1, 2, 3} and (values > 0).any()
    shares = [result[k] for k in ("IMPROVEMENT", "OMISSION", "HALLUCINATION")]
    assert sum(shares) == pytest.approx(1.0)
    assert result["IMPROVEMENT"] == pytest.approx((values == 1).sum() / (values > 0).sum())
    assert "<h3>Overall</h3>" in text and "<td class='l'>regression</td>" in text and "<td class='l'>bicubic</td>" in text
    assert result["OUTPUT_DIFFERENCE"] is None
    for name in ("PSNR", "SSIM", "ERGAS", "SAM", "CONSISTENCY_PSNR", "HF_RATIO", "LSD"):
        assert isinstance(result[name], float) and math.isfinite(result[name])
    bicubic = processing.run("latentsr:evaluate", {"REFERENCE": hr, "SCALE": 2, "METHOD": 3,
                                                   "OUTPUT_HTML": str(tmp_path / "b.html")})
    assert bicubic["PSNR"] > 20 and bicubic["PSNR"] != result["PSNR"]


@pytest.mark.parametrize("params,fragment", [
    ({"INPUT": "{b}"}, "must be on the same grid"),
    ({}, "needs a scale"),
])
def test_processing_errors(provider, tmp_path, params, fragment):
    import processing
    from qgis.core import QgsProcessingException

    a = write_raster(tmp_path / "a.tif", np.ones((1, 20, 20), np.uint8))
    b = write_raster(tmp_path / "b.tif", np.ones((1, 21, 20), np.uint8))
    params = {k: v.format(b=b) for k, v in params.items()}
    with pytest.raises(QgsProcessingException) as err:
        processing.run("latentsr:evaluate", {"REFERENCE": a, "OUTPUT_HTML": str(tmp_path / "r.html"), **params})
    message = str(err.value).strip()
    assert fragment in message and "\n" not in message and "Traceback" not in message


def cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", "evaluate", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def test_cli(tmp_path):
    sr, hr = hand_case(tmp_path)
    r = cli("--sr", sr, "--hr", hr, "--scale", "2", "--html", tmp_path / "r.html", "--difference", tmp_path / "d.tif")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["method", "band", "PSNR"] and len(lines) == 4
    assert lines[3].split()[:3] == ["sr.tif", "overall", f"{10 * math.log10(255 ** 2 / (15 * 100 / 31)):.2f}"]
    assert os.path.exists(tmp_path / "r.html") and os.path.exists(tmp_path / "d.tif")
    r = cli("--sr", sr, "--hr", hr, "--scale", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["mode"] == "reference" and data["results"][0]["bands"][1]["psnr"] == "inf"
    assert data["results"][0]["overall"]["ssim"] is None
    assert data["results"][0]["overall"]["ergas"] == pytest.approx(50 * math.sqrt(0.01 / 2))


def test_cli_lsd_and_correctness_raster(tmp_path):
    """LSD and the correctness shares in the JSON, and the class raster on the SR's grid: an SR that
    is the HR is all improvement and LSD 0."""
    rng = np.random.default_rng(5)
    hr = (rng.random((3, 48, 48)) * 255).astype(np.uint8)
    sr_path = write_raster(tmp_path / "sr.tif", hr)
    hr_path = write_raster(tmp_path / "hr.tif", hr)
    r = cli("--sr", sr_path, "--hr", hr_path, "--scale", "4", "--json", "--correctness", tmp_path / "c.tif")
    assert r.returncode == 0, r.stderr
    overall = json.loads(r.stdout)["results"][0]["overall"]
    assert overall["lsd"] == 0.0 and overall["improvement"] == 1.0 and overall["hallucination"] == 0.0
    values, ds = read(tmp_path / "c.tif")
    assert ds.GetGeoTransform() == gdal.Open(sr_path).GetGeoTransform() and values.shape == (48, 48)
    assert set(np.unique(values)) == {0, 1} and (values[:4] == 0).all()  # the border is not classified


@pytest.mark.parametrize("args,fragment", [
    (["--sr", "{b}", "--hr", "{a}"], "must be on the same grid"),
    (["--sr", "{a}"], "required: --hr"),
    (["--hr", "{a}"], "needs a scale"),
    (["--hr", "{a}", "--scale", "2", "--method", "magic"], "invalid choice"),
    (["--hr", "missing.tif", "--scale", "2"], "not found"),
    (["--sr", "{a}", "--hr", "{a}", "--correctness", "{c}"], "give a scale or an LR raster"),
    (["--hr", "{a}", "--scale", "2", "--correctness", "{a}"], "would overwrite the reference"),
    (["--hr", "{a}", "--scale", "2", "--correctness", "{png}"], "must end in .tif"),
    (["--hr", "{a}", "--scale", "2", "--detail", "2"], "detail must be between 0 and 1"),
])
def test_cli_errors(tmp_path, args, fragment):
    a = write_raster(tmp_path / "a.tif", np.ones((1, 20, 20), np.uint8))
    b = write_raster(tmp_path / "b.tif", np.ones((1, 21, 20), np.uint8))
    r = cli(*(x.format(a=a, b=b, c=tmp_path / "c.tif", png=tmp_path / "c.png") for x in args))
    assert r.returncode == 2 and r.stdout == ""
    assert not os.path.exists(tmp_path / "c.tif") and not os.path.exists(tmp_path / "c.png")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


def test_lattice_against_the_bicubic_of_the_lr(tmp_path):
    """Reference mode: an SR that is bicubic plus a cross-hatch locked to the LR pixels has a lattice
    figure far above the reference's own, and both are engine.metrics.lattice of the border crops of
    SR − bicubic(LR) and HR − bicubic(LR)."""
    from engine.resample import cubic_upsample

    rng = np.random.default_rng(3)
    hr = metrics.gaussian_blur(rng.random((3, 74, 74)) * 255, sigma=1.0, radius=5)  # 64×64 of texture
    lr = downsample(hr, 16, 16)
    t = np.arange(64)
    hatch = 4 * np.add.outer(np.cos(2 * np.pi * t / 4), np.cos(2 * np.pi * t / 4))
    sr = cubic_upsample(lr, 64, 64) + hatch
    paths = [write_raster(tmp_path / f"{n}.tif", a, FLOAT32) for n, a in (("hr", hr), ("lr", lr), ("sr", sr))]
    report = evaluate.evaluate(EvaluateRequest(reference=paths[0], lr=paths[1], sr=paths[2]))
    crop = [metrics.crop_border(a.astype(np.float32).astype(np.float64), 4) for a in (sr, hr, cubic_upsample(
        lr.astype(np.float32).astype(np.float64), 64, 64))]
    overall = report.main.overall
    assert overall["lattice"] == pytest.approx(metrics.lattice(crop[0] - crop[2], 4), abs=1e-6)
    assert overall["lattice_hr"] == pytest.approx(metrics.lattice(crop[1] - crop[2], 4), abs=1e-6)
    assert overall["lattice"] > 40 > overall["lattice_hr"] + 30
    assert report.main.bands[0]["lattice"] > 40
    assert any(n.startswith("Lattice: SR − bicubic") for n in report.notes)
    no_scale = evaluate.evaluate(EvaluateRequest(reference=paths[0], sr=paths[2]))
    assert math.isnan(no_scale.main.overall["lattice"]) and math.isnan(no_scale.main.overall["lattice_hr"])


def test_lattice_of_a_diffusion_method_is_against_its_regression(tmp_path, model_dir):
    """Degradation mode with LCMSR: the baseline is the model's regression (one more run, not a row);
    bicubic's row has no lattice figure. The reference's figure is HR − that regression's."""
    hr = write_raster(tmp_path / "hr.tif", texture((3, 64, 64)))
    report = evaluate.evaluate(EvaluateRequest(reference=hr, scale=4,
                                               options=RunOptions(method="lcmsr", model=model_dir, detail=1.0)))
    assert [r.label for r in report.rows] == ["lcmsr", "bicubic"]
    assert "Lattice: lcmsr − regression against the reference's HR − the same." in report.notes
    assert math.isfinite(report.main.overall["lattice"]) and math.isnan(report.rows[1].overall["lattice"])
    reg = evaluate.evaluate(EvaluateRequest(reference=hr, scale=4, difference=str(tmp_path / "reg.tif"),
                                            options=RunOptions(method="regression", model=model_dir)))
    minus_hr = read(tmp_path / "reg.tif")[0].astype(np.float64)  # the difference raster: regression − HR
    expected = metrics.lattice(-metrics.crop_border(minus_hr, 4), 4)
    assert report.main.overall["lattice_hr"] == pytest.approx(expected, abs=1e-3)
    assert "Lattice: regression − bicubic of the LR against the reference's HR − the same." in reg.notes
