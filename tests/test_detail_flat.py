"""The flat detail path (decoder ``detail_flat``, issue 25) and the stage-2 decoder trained on what is
decoded (``--train-decoder``): a latent offset shared by a region no longer paints the 8×8 lattice;
without the key the decoder is the one before; it exports to ONNX and tiles seamlessly; the training
option runs and resumes exactly."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine import modelfile
from engine.card import parse
from engine.grid import Grid
from engine.methods import DEFAULTS, MethodOptions, build_method, from_bundle
from engine.models import build, preset
from engine.models.sampling import LATENT_FACTOR, Plan
from engine.pipeline import superresolve
from training import export
from training.bundle import random_bundle, write
from training.cli import main

from tests.conftest import ROOT, read, request
from tests.test_models import lr
from tests.test_seams import CROP, TILE, naip_crop  # noqa: F401 (fixture)
from tests.test_training import images, stage1, train_args  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def flat_bundle(detail_flat: bool = True):
    """A tiny random bundle whose detail path reads the latent (a fresh one reads nothing), flat or not."""
    card, tensors = random_bundle("tiny", seed=3, name="tiny-flat")
    card = card.to_json()
    gen = torch.Generator().manual_seed(4)
    tensors["decoder.detail.weight"] = 0.05 * torch.randn(tensors["decoder.detail.weight"].shape, generator=gen)
    if detail_flat:
        card["networks"]["decoder"]["config"]["detail_flat"] = True
    for spec in card["methods"].values():
        spec["latent_scale"] = 1.7
    return parse(card), tensors


def decoders():
    torch.manual_seed(0)
    config = preset("tiny", "decoder")
    plain = build("decoder", config)
    torch.nn.init.normal_(plain.detail.weight)
    flat = build("decoder", dict(config, detail_flat=True))
    flat.load_state_dict(plain.state_dict())
    return plain, flat


def cell_spread(d: torch.Tensor) -> torch.Tensor:
    """(B, H, W, bands) on the 8×8 grid -> the largest std over the 64 pixels of a cell, per band."""
    b, h, w, c = d.shape
    cells = d.reshape(b, h // LATENT_FACTOR, LATENT_FACTOR, w // LATENT_FACTOR, LATENT_FACTOR, c)
    return cells.std(dim=(2, 4)).amax()


def test_a_shared_latent_offset_shifts_the_level_instead_of_painting_a_lattice():
    """The measured cause of the lattice (docs/MODELS.md, "The lattice"): a one-step sample's latent is
    off the guess by an offset shared by whole regions, and the linear detail path answers a uniform
    latent with the same 8×8 pattern in every cell. With detail_flat that answer is one value per cell
    and band; a latent that varies from cell to cell still makes patterns within the cells."""
    plain, flat = decoders()
    grid = Grid.whole(24, 24, 4.0)
    plan = Plan.build(24, 24, grid, 1)
    t = plan.tensors("cpu")
    z = torch.randn(1, 16, *plan.latent_shape, generator=torch.Generator().manual_seed(1))
    offset = torch.randn(1, 16, 1, 1, generator=torch.Generator().manual_seed(2))
    inner = (slice(None), slice(8, -8), slice(8, -8))  # cells with all their 3×3 neighbours in the latent
    with torch.no_grad():
        for dec, flat_cells in ((plain, False), (flat, True)):
            def detail(latent):
                return dec.detail_map(latent, t["out_y_idx"], t["out_y_w"], t["out_x_idx"], t["out_x_w"])
            added = (detail(z + offset) - detail(z))[inner]
            assert (cell_spread(added) < 1e-5) == flat_cells
            assert added.abs().mean() > 0.1
            assert cell_spread(detail(z)[inner]) > 0.1  # real detail keeps its sub-cell patterns
        assert cell_spread(flat.detail_map(torch.zeros_like(z), t["out_y_idx"], t["out_y_w"], t["out_x_idx"],
                                           t["out_x_w"])[inner]) < 1e-6  # and the bias paints no pattern


def test_without_the_key_the_decoder_is_the_one_before():
    """A card without detail_flat builds the decoder as before (its config and so its card unchanged,
    the same output); the key needs the detail path."""
    plain, flat = decoders()
    assert "detail_flat" not in plain.config and flat.config["detail_flat"] is True
    again = build("decoder", dict(plain.config, detail_flat=False))
    assert again.config == plain.config
    again.load_state_dict(plain.state_dict())
    x = lr(h=13, w=11, seed=1)
    plan = Plan.build(13, 11, Grid.whole(13, 11, 3.0), 1)
    t = plan.tensors("cpu")
    z = torch.randn(1, 16, *plan.latent_shape)
    args = (torch.from_numpy(x)[None], z, torch.full((1, 1), 1 / 3.0), t["out_y_idx"], t["out_y_w"], t["out_x_idx"],
            t["out_x_w"], t["lat_y_idx"], t["lat_y_w"], t["lat_x_idx"], t["lat_x_w"])
    with torch.no_grad():
        assert torch.equal(again(*args), plain(*args))
        assert not torch.allclose(flat(*args), plain(*args))
    with pytest.raises(ValueError, match="needs the detail path"):
        build("decoder", dict(preset("tiny", "decoder"), detail=False, detail_flat=True))


@pytest.fixture(scope="module")
def flat_exported(tmp_path_factory):
    card, tensors = flat_bundle()
    folder = tmp_path_factory.mktemp("onnx") / "tiny-flat"
    write(folder, card, tensors)
    export.export(str(folder))  # it checks every graph against the torch networks, too
    return card, tensors, str(folder)


@pytest.mark.parametrize("name,steps", [("regression", None), ("lcmsr", 1), ("e2diffsr", 2)])
def test_flat_detail_exports_to_onnx_and_matches_torch(flat_exported, name, steps):
    card, tensors, folder = flat_exported
    assert modelfile.load(folder)[0].networks["decoder"].config["detail_flat"] is True
    torch_method = from_bundle(name, card, tensors, steps, "cpu")
    onnx_method = build_method(name, MethodOptions(steps, "onnx", "cpu", folder))
    x = lr(c=3, h=21, w=26, seed=2)
    for scale in (2.5, 4.0):
        grid = Grid.whole(21, 26, scale)
        assert np.abs(onnx_method(x, grid, 7) - torch_method(x, grid, 7)).max() <= 1e-5


def test_the_bundle_with_a_flat_detail_path_tiles_seamlessly(naip_crop, tmp_path):  # noqa: F811
    """tests/test_seams.py's check on the committed bundle with detail_flat set (the same weights):
    LCMSR at ×4 and D = 1, 3 × 2 tiles with the default overlap against one tile."""
    folder = tmp_path / "flat"
    shutil.copytree(f"{ROOT}/resources/models/latentsr-rgb", folder)
    card = json.loads((folder / "model.json").read_text())
    card["networks"]["decoder"]["config"]["detail_flat"] = True
    card.pop("onnx", None)  # its graphs were exported for the card without the key
    (folder / "model.json").write_text(json.dumps(card))
    outputs = []
    for tile, overlap in ((max(CROP[2:]) + 1, 0), (TILE, DEFAULTS.overlap)):
        out = str(tmp_path / f"{tile}.tif")
        result = superresolve(request(naip_crop, out, scale=4.0, method="lcmsr", detail=1.0, tile=tile,
                                      overlap=overlap, seed=5, model=str(folder), backend="torch"))
        outputs.append(read(out)[0].astype(np.int16))
    assert result.tiles == 6
    diff = np.abs(outputs[1] - outputs[0])
    assert diff.max() <= 1 and diff.mean() <= 0.005


def test_train_decoder_runs_resumes_exactly_and_exports_the_decoder(images, stage1, tmp_path):  # noqa: F811
    """LCMSR with --train-decoder --detail-flat: the decoder is a trained network of the run (started
    from stage 1's, flat), its checkpoint resumes bit-exactly, and the run's model holds it."""
    extra = ["--stage1", str(stage1), "--gan-weight", "0.1", "--energy-weight", "1", "--train-decoder", "--detail-flat"]
    assert main(train_args("lcmsr", images, tmp_path / "straight", 4, *extra)) == 0
    assert main(train_args("lcmsr", images, tmp_path / "resumed", 2, "--schedule-steps", "4", *extra)) == 0
    assert main(train_args("lcmsr", images, tmp_path / "resumed", 4, "--resume", *extra)) == 0
    a = load_file(str(tmp_path / "straight" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and "model.decoder.detail.weight" in a and "ema.decoder.detail.weight" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    start = load_file(str(stage1 / "model.safetensors"))
    assert not torch.equal(a["model.decoder.detail.weight"], start["decoder.detail.weight"])  # it was trained
    card = json.loads((tmp_path / "straight" / "model.json").read_text())
    assert card["networks"]["decoder"]["config"]["detail_flat"] is True
    assert card["training"]["options"]["train_decoder"] is True
    # the bundle takes the decoder from the run that trained it
    assert main(["bundle", "--stage1", str(stage1), "--lcmsr", str(tmp_path / "straight"), "--out", str(tmp_path),
                 "--name", "b"]) == 0
    bundled = load_file(str(tmp_path / "b" / "model.safetensors"))
    run = load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert all(torch.equal(bundled[k], run[k]) for k in run if k.startswith("decoder."))
    assert json.loads((tmp_path / "b" / "model.json").read_text())["networks"]["decoder"]["config"]["detail_flat"]


def test_detail_flat_in_stage2_needs_train_decoder(images, stage1, tmp_path, capsys):  # noqa: F811
    assert main(train_args("lcmsr", images, tmp_path / "run", 2, "--stage1", str(stage1), "--detail-flat")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--train-decoder" in err


def test_stage1_detail_flat_trains_a_flat_decoder(images, tmp_path):  # noqa: F811
    """stage 1 --detail-flat: the run's decoder has the flat path (its PCA start projected), recorded
    in its card, and it resumes from its checkpoint with it."""
    out = tmp_path / "stage1"
    assert main(train_args("stage1", images, out, 2, "--detail-flat")) == 0
    assert main(train_args("stage1", images, out, 3, "--resume")) == 0
    card, tensors = modelfile.load(str(out))
    assert card.networks["decoder"].config["detail_flat"] is True and card.training["step"] == 3
    dec = modelfile.build_networks(card, tensors, ["decoder"], "cpu")["decoder"]
    weight, _ = dec.flat_detail()
    sums = weight.sum((2, 3)).unflatten(0, (-1, LATENT_FACTOR ** 2))
    assert dec.detail.weight.abs().sum() > 0 and (sums - sums.mean(1, keepdim=True)).abs().max() < 1e-5
