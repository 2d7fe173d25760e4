"""Training on rasters (training.rasters), fine-tuning (python -m training finetune) and latentsr:train."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal
from safetensors.torch import load_file

from engine import raster as engine_raster
from engine.cli import main as engine_main
from training import bands, rasters
from training.batch import fill_nodata, make_pair
from training.bundle import random_bundle, write
from training.cli import main as train_main

from tests.conftest import write_raster
from tests.test_training import texture
from tests.test_ui import fresh_settings, make_dock  # noqa: F401 - fixtures


def test_window_nodata_counts_every_window():
    rng = np.random.default_rng(0)
    valid = rng.random((12, 15)) > 0.2
    share = rasters.window_nodata(valid, 4)
    assert share.shape == (9, 12)
    for y in range(9):
        for x in range(12):
            assert share[y, x] == pytest.approx((~valid[y:y + 4, x:x + 4]).mean())
    origins = rasters.candidate_origins(valid, 4, 0.1, rows=10)
    assert len(origins) == ((share[:7] <= 0.1).sum())
    assert all((~valid[y:y + 4, x:x + 4]).mean() <= 0.1 and y + 4 <= 10 for y, x in origins)


@pytest.fixture(scope="module")
def nodata_raster(tmp_path_factory):
    """A 4-band Byte raster, nodata 0: the left 40 columns and scattered pixels above the last 32 rows
    are nodata; band 1 of
    the last rows (which validation holds back) is 1, found nowhere else."""
    img = np.moveaxis(texture(128, 128, 5, bands=4), -1, 0).clip(2, 255)
    img[:, :, :40] = 0
    rng = np.random.default_rng(3)
    img[:, rng.integers(0, 96, 60), rng.integers(40, 128, 60)] = 0
    img[0, 100:] = np.where(img[0, 100:] > 0, 1, 0)
    return write_raster(tmp_path_factory.mktemp("rasters") / "nodata.tif", img, nodata=0)


def test_windows_avoid_nodata_and_the_held_back_rows(nodata_raster):
    source = rasters.RasterSet([nodata_raster], None, crop=32, val_crop=32)
    assert source.bands == 4 and source.sources[0].train_rows == 128 - 32
    ds = rasters.WindowDataset(source, seed=1)
    windows = torch.stack([ds[(step, i)] for step in range(10) for i in range(4)])
    torch.testing.assert_close(ds[(3, 1)], ds[(3, 1)], equal_nan=True)  # a pure function of (step, index)
    nodata = torch.isnan(windows).any(1).float().mean((1, 2))
    assert nodata.max() <= rasters.MAX_NODATA and nodata.max() > 0  # some hold a few nodata pixels, none more
    assert not torch.isclose(windows[:, 0], torch.tensor(1 / 255)).any()  # never the held-back rows
    pair = make_pair(windows, 2.0, 1)
    assert torch.isfinite(pair.hr).all() and torch.isfinite(pair.lr).all()
    assert torch.equal(pair.valid[:, 0] == 0, torch.isnan(windows).any(1))
    zero = pair.keep_valid(torch.zeros_like(pair.hr))  # nodata pixels take HR's value: no loss, no gradient
    assert torch.equal(zero == pair.hr, (pair.valid == 0).expand_as(zero) | (pair.hr == 0))
    val = source.validation(32, 8)
    assert val.shape[1:] == (4, 32, 32) and np.isfinite(val).all() and np.isclose(val[:, 0], 1 / 255).any()


def test_fill_nodata_takes_the_neighbours_mean():
    hr = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    valid = torch.ones(1, 1, 5, 5)
    valid[0, 0, 2, 2] = 0
    filled = fill_nodata(torch.where(valid > 0, hr, torch.nan), valid)
    assert filled[0, 0, 2, 2] == pytest.approx(12.0) and torch.equal(filled[valid > 0], hr[valid > 0])


@pytest.fixture(scope="module")
def uint16_raster(tmp_path_factory):
    """A 4-band UInt16 reflectance-like raster (values 300..12000), nodata 0 in a corner."""
    img = (np.moveaxis(texture(160, 128, 7, bands=4), -1, 0).astype(np.uint16) * 45 + 300)
    img[:, :12, :12] = 0
    return write_raster(tmp_path_factory.mktemp("rasters") / "reflectance.tif", img, gdal.GDT_UInt16, nodata=0)


def test_windows_are_normalised_as_inference_normalises(uint16_raster):
    ds = engine_raster.open_raster(uint16_raster)
    norms = engine_raster.band_norms(ds, engine_raster.describe(ds, None))
    source = rasters.RasterSet([uint16_raster], [4, 2], crop=32, val_crop=32)
    record = source.card()["rasters"][0]
    assert record["data_type"] == "uint16" and [b["band"] for b in record["bands"]] == [4, 2]
    assert [(b["offset"], b["scale"]) for b in record["bands"]] == [(norms[3].offset, norms[3].scale),
                                                                   (norms[1].offset, norms[1].scale)]
    stored = ds.ReadAsArray()
    window = source.read(source.sources[0], 40, 50, 32)
    np.testing.assert_allclose(window[0], (stored[3, 50:82, 40:72] - norms[3].offset) / norms[3].scale, rtol=1e-6)
    assert norms[3].scale > 1000  # not /65535 and not /255: the raster's own percentiles


def test_new_bands_start_from_the_mean_filters():
    old = torch.arange(2 * 3 * 64, dtype=torch.float32).reshape(2, 3 * 64, 1, 1)
    new = bands.adapt("condition", "head.weight", old, 3, 4)
    assert new.shape == (2, 4 * 64, 1, 1)
    torch.testing.assert_close(new[:, :192] * 4 / 3, old)
    torch.testing.assert_close(new[:, 192:] * 4 / 3, old.reshape(2, 3, 64, 1, 1).mean(1))
    tail = torch.randn(3, 16, 1, 1)
    torch.testing.assert_close(bands.adapt("decoder", "tail.2.weight", tail, 3, 4)[3], tail.mean(0))


@pytest.mark.parametrize("n", [4, 5, 7])
def test_a_widened_decoder_starts_as_the_start_decoder_by_band_groups(n):
    """Bands 1-3 are the start decoder on bands 1-3, band 4 (a short group) the mean of its outputs on
    [4, 4, 4], and so on (float64: exact up to rounding)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # make_pair's tables too
    try:
        check_widened_decoder(n)
    finally:
        torch.set_default_dtype(dtype)


def check_widened_decoder(n):
    from engine.models import build

    with torch.random.fork_rng():
        torch.manual_seed(0)
        old = build("decoder", dict(bands=3, latent=4, channels=12, blocks=2, up_channels=4, tail_channels=6,
                                    emb_dim=16, detail=True)).double().eval()
        for p in old.parameters():
            torch.nn.init.normal_(p, std=0.3)
        k = bands.band_group_copies(3, n)
        new = build("decoder", dict(bands=n, latent=4, channels=12 * k, blocks=2, up_channels=4 * k,
                                    tail_channels=6 * k, emb_dim=16, detail=True)).double().eval()
        assert bands.load_adapted(new, "decoder", old.state_dict(), 3) == []
        pair = make_pair(torch.rand(2, n, 32, 32, dtype=torch.float64), 2.5, 1)
        z = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        out = new(*pair.decoder_inputs(z))
        for b, (g, positions) in enumerate(bands.group_rows(3, n)):
            m = min(3, n - 3 * g)
            group = [3 * g + p % m for p in range(3)]
            ref = old(*pair.decoder_inputs(z)._replace(lr=pair.lr[:, group]))[:, positions].mean(1)
            torch.testing.assert_close(out[:, b], ref, rtol=0, atol=1e-10)


INIT_EDGE = [1, 3, 2, 2]  # the start model's edge of E²DiffSR's sampled latent per step count (training.reach)


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    card, tensors = random_bundle("tiny", seed=0, name="tiny-rgb")
    methods = card.to_json()["methods"]
    methods["e2diffsr"]["sample_edge"] = INIT_EDGE
    return str(write(tmp_path_factory.mktemp("models") / "tiny-rgb", card.updated(methods=methods), tensors))


def finetune_args(raster, out, init, steps=2, *extra):
    return ["finetune", "--rasters", raster, "--out", str(out), "--init", init, "--steps", str(steps),
            "--stage2-steps", "2", "--crop", "32", "--batch", "2", "--val-crop", "32", "--val-images", "2",
            "--no-progress", *extra]


def test_finetune_writes_a_bundle_that_superresolves(uint16_raster, tiny_init, tmp_path):
    out = tmp_path / "reflectance-model"
    assert train_main(finetune_args(uint16_raster, out, tiny_init)) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["bands"] == 4 and "2 copies of the start model's trunk" in card["band_start"]
    assert card["networks"]["decoder"]["config"]["channels"] == 2 * json.loads(
        (Path(tiny_init) / "model.json").read_text())["networks"]["decoder"]["config"]["channels"]
    assert set(card["methods"]) == {"e2diffsr", "lcmsr", "regression"} and card["onnx"]
    # the start model's measured edge goes with its E²DiffSR; its LCMSR had none
    assert card["methods"]["e2diffsr"]["sample_edge"] == INIT_EDGE and "sample_edge" not in card["methods"]["lcmsr"]
    ds = engine_raster.open_raster(uint16_raster)
    norms = engine_raster.band_norms(ds, engine_raster.describe(ds, None))
    recorded = card["normalisation"]["rasters"][0]["bands"]
    assert [(b["offset"], b["scale"]) for b in recorded] == [(n.offset, n.scale) for n in norms]
    assert not any(k.startswith("encoder.") for k in load_file(str(out / "model.safetensors")))
    assert card["encoder"]["file"] == "encoder.safetensors" and (out / "encoder.safetensors").is_file()
    # the same command again resumes: every stage is already done, the bundle is the same model
    before = json.loads((out / "training" / "stage1" / "checkpoint.json").read_text())["history"]
    assert train_main(finetune_args(uint16_raster, out, tiny_init)) == 0
    assert json.loads((out / "training" / "stage1" / "checkpoint.json").read_text())["history"] == before
    sr = tmp_path / "sr.tif"
    assert engine_main(["superresolve", uint16_raster, str(sr), "--scale", "2", "--method", "regression",
                        "--model", str(out)]) == 0
    result = gdal.Open(str(sr))
    assert (result.RasterCount, result.RasterXSize, result.GetRasterBand(4).DataType) == (4, 256, gdal.GDT_UInt16)
    values = result.ReadAsArray()[:, 40:, 40:]
    assert 0 < np.median(values) < 20000  # in the raster's units, not shifted


def test_finetune_refuses_its_start_folder_and_bad_scales(uint16_raster, tiny_init, tmp_path, capsys):
    assert train_main(finetune_args(uint16_raster, tiny_init, tiny_init)) == 2
    assert train_main(finetune_args(uint16_raster, tmp_path / "m", tiny_init, 2, "--scales", "4", "2")) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "start model's folder" in errors[0] and "MIN <= MAX" in errors[1]


def test_ctrl_c_checkpoints_and_the_run_resumes(uint16_raster, tmp_path):
    """Ctrl-C during a step lets it finish, saves a checkpoint and stops; resuming goes on from it."""
    import os
    import signal

    from training.errors import Interrupted
    from training.stage1 import Stage1
    from training.trainer import Settings, Trainer

    def settings(resume=False):
        return Settings(data=[uint16_raster], rasters=True, out=str(tmp_path / "run"), steps=3, crop=32, batch=2,
                        preset="tiny", val_crop=32, val_images=1, val_every=10, warmup=1, progress=False, resume=resume)

    trainer = Trainer(Stage1, settings())
    trainer.report = lambda step, loss, val: os.kill(os.getpid(), signal.SIGINT) if step == 1 else None
    with pytest.raises(Interrupted, match="stopped at step 1"):
        trainer.run()
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 1
    resumed = Trainer(Stage1, settings(resume=True))
    assert resumed.step == 1
    resumed.run()
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 3


def test_train_algorithm_cancels_resumes_and_offers_the_model(provider, make_dock, uint16_raster, tiny_init, tmp_path):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    from latentsr.provider import user_models

    alg = provider.algorithm("train")
    for name in ("INPUT", "BANDS", "INIT_MODEL", "STEPS", "SCALE_MIN", "SCALE_MAX", "VALIDATION", "OUTPUT_MODEL"):
        assert alg.parameterDefinition(name).help(), name
    out = str(tmp_path / "my-model")
    params = {"INPUT": [uint16_raster], "BANDS": "1,2,3,4", "INIT_MODEL": tiny_init, "STEPS": 3, "STAGE2_STEPS": 2,
              "SCALE_MIN": 2, "SCALE_MAX": 4, "BATCH": 2, "CROP": 32, "OUTPUT_MODEL": out}
    feedback, lines = QgsProcessingFeedback(), []
    feedback.progressChanged.connect(lambda value: feedback.cancel())  # cancel after the first step
    feedback.pushInfo = lines.append
    with pytest.raises(QgsProcessingException, match="run again with the same output model folder to resume"):
        processing.run("latentsr:train", params, feedback=feedback)
    stage1 = Path(out) / "training" / "stage1"
    assert json.loads((stage1 / "checkpoint.json").read_text())["step"] == 1 and not (Path(out) / "model.json").exists()
    feedback, lines = QgsProcessingFeedback(), []
    feedback.pushInfo = lines.append
    result = processing.run("latentsr:train", params, feedback=feedback)
    assert result["OUTPUT_MODEL"] == out
    state = json.loads((stage1 / "checkpoint.json").read_text())
    assert state["step"] == 3 and [s for s, _ in state["history"]["loss"]] == [1, 2, 3]  # resumed, not restarted
    assert any("stage1 step 3/3: loss" in line and "validation PSNR" in line for line in lines)
    card = json.loads((Path(out) / "model.json").read_text())
    assert card["bands"] == 4 and card["onnx"]
    assert out in [folder for _, folder in user_models.listed()]
    dock = make_dock()
    dock.fill_model_list()
    index = dock.model_list.findData(out)
    assert index >= 0
    dock.model_list.activated.emit(index)
    assert dock.model.filePath() == out
