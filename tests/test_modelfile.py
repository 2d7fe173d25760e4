import json

import numpy as np
import pytest

from engine import modelfile
from engine.card import parse
from engine.errors import LatentSRError
from engine.grid import Grid
from engine.methods import MethodOptions, build_method, from_bundle
from training.bundle import random_bundle, write


@pytest.fixture
def bundle():
    return random_bundle("tiny", seed=1, name="tiny")


@pytest.fixture
def folder(bundle, tmp_path):
    return write(tmp_path / "tiny", *bundle)


def test_round_trip_gives_identical_outputs(bundle, folder):
    card, tensors = modelfile.load(str(folder))
    assert card.weights.sha256 == modelfile.sha256((folder / modelfile.WEIGHTS).read_bytes())
    assert tensors.keys() == bundle[1].keys()
    x = np.random.default_rng(0).random((3, 15, 13), dtype=np.float32)
    grid = Grid.whole(15, 13, 2.5)
    for name in ("regression", "lcmsr", "e2diffsr"):
        before = from_bundle(name, *bundle, device="cpu")(x, grid, 4)
        after = build_method(name, MethodOptions(model=str(folder)))(x, grid, 4)
        np.testing.assert_array_equal(before, after)


def test_card_fields(folder):
    card = json.loads((folder / modelfile.CARD).read_text())
    assert card["format"] == modelfile.FORMAT and card["version"] == modelfile.VERSION
    assert card["bands"] == 3 and card["scale_range"] == [1, 8] and "normalisation" in card and "training" in card
    assert card["methods"]["e2diffsr"]["steps"] == 4 and card["methods"]["lcmsr"]["steps"] == 1
    assert {spec["kind"] for spec in card["networks"].values()} == {"decoder", "condition", "denoiser"}


def test_tampered_weights_are_refused(folder):
    path = folder / modelfile.WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LatentSRError, match="SHA-256"):
        modelfile.load(str(folder))
    with pytest.raises(LatentSRError, match="SHA-256"):
        build_method("lcmsr", MethodOptions(model=str(folder)))


def test_bad_cards_are_refused(folder):
    card_path = folder / modelfile.CARD
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps(dict(card, version=99)))
    with pytest.raises(LatentSRError, match="version 99"):
        modelfile.load(str(folder))
    bad = json.loads(json.dumps(card))
    bad["methods"]["e2diffsr"]["prediction"] = "v"
    card_path.write_text(json.dumps(bad))
    with pytest.raises(LatentSRError, match="methods.e2diffsr.prediction"):
        modelfile.load(str(folder))
    card_path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LatentSRError, match="not a LatentSR model card"):
        modelfile.load(str(folder))
    card_path.write_text("{ not json")
    with pytest.raises(LatentSRError, match="cannot read the model card"):
        modelfile.load(str(folder))


def test_weights_that_do_not_fit_the_config_are_refused(bundle, tmp_path):
    card, tensors = bundle
    card = card.to_json()
    card["networks"]["decoder"]["config"]["channels"] = 16
    write(tmp_path / "bad", parse(card), tensors)
    with pytest.raises(LatentSRError, match="do not fit"):
        build_method("regression", MethodOptions(model=str(tmp_path / "bad")))


def test_lookup_by_name(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(modelfile, "MODELS_DIR", tmp_path)
    write(tmp_path / modelfile.DEFAULT_MODEL, *bundle)
    assert modelfile.resolve(None) == tmp_path / modelfile.DEFAULT_MODEL
    assert build_method("regression", MethodOptions()).name == "regression"
    with pytest.raises(LatentSRError, match="no bundled model 'other' found in resources/models"):
        modelfile.resolve("other")
    with pytest.raises(LatentSRError, match="no model found in"):
        modelfile.resolve(str(tmp_path / "missing" / "dir"))


def test_missing_default_model_message(tmp_path, monkeypatch):
    monkeypatch.setattr(modelfile, "MODELS_DIR", tmp_path)
    with pytest.raises(LatentSRError, match="no bundled model 'latentsr-rgb' found in resources/models: train one with `make train`"):
        build_method("lcmsr", MethodOptions())


def test_inference_bundle_without_a_method(bundle, tmp_path):
    card, tensors = bundle
    card = card.updated(methods={k: v for k, v in card.to_json()["methods"].items() if k != "e2diffsr"})
    write(tmp_path / "partial", card, tensors)
    with pytest.raises(LatentSRError, match="cannot run method 'e2diffsr'"):
        build_method("e2diffsr", MethodOptions(model=str(tmp_path / "partial")))
