import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.grid import Grid
from engine.methods import MethodOptions, build_method
from training import data, precision
from training.batch import make_pair
from training.cli import main
from training.stage1 import Stage1
from training.trainer import Settings, ema_decay, learning_rate

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks trained in-process (conftest.one_thread)


def texture(h: int, w: int, seed: int, bands: int = 3) -> np.ndarray:
    """A synthetic aerial-like uint8 image H×W×bands: smooth shading, stripes and blocks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, bands))
    for c in range(bands):
        for _ in range(4):
            f, a, b = rng.uniform(2, 12), rng.uniform(-1, 1), rng.uniform(-1, 1)
            img[..., c] += np.sin(2 * np.pi * f * (a * x + b * y) + rng.uniform(0, 6)) / 4
        for _ in range(3):
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            img[y0:y0 + rng.integers(4, 16), x0:x0 + rng.integers(4, 16), c] += rng.uniform(-1, 1)
    return np.clip(127 + 60 * img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "train" / "a").mkdir(parents=True)
    (root / "val").mkdir()
    Image.fromarray(texture(64, 72, 0)).save(root / "train" / "a" / "one.png")
    Image.fromarray(texture(70, 64, 1)).save(root / "train" / "two.webp", lossless=True)
    Image.fromarray(texture(64, 64, 2, bands=4)).save(root / "train" / "four.tif")
    Image.fromarray(texture(48, 40, 3)[..., 0]).save(root / "train" / "grey.png")
    Image.fromarray(texture(64, 64, 4)).save(root / "val" / "v.png")
    (root / "train" / "notes.txt").write_text("not an image")
    return root


def test_reading_images(images):
    files = data.list_images(images / "train")
    assert [f.name for f in files] == ["one.png", "four.tif", "grey.png", "two.webp"]
    shapes = {f.name: data.read_image(f).shape for f in files}
    assert shapes == {"one.png": (3, 64, 72), "four.tif": (4, 64, 64), "grey.png": (1, 48, 40), "two.webp": (3, 70, 64)}
    img = data.read_image(files[0])
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    np.testing.assert_allclose(img[:, 0, 0], texture(64, 72, 0)[0, 0] / 255, atol=1e-7)
    assert data.normalise(np.array([65535], dtype=np.uint16))[0] == 1.0


def test_bands_and_crops(images):
    grey = np.zeros((1, 4, 4), np.float32)
    assert data.pick_bands(grey, 3, None).shape == (3, 4, 4)
    four = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    assert list(data.pick_bands(four, 3, None)[:, 0, 0]) == [0, 1, 2]
    ds = data.CropDataset(data.list_images(images / "train"), 64, 3, seed=1)
    a, b = ds[(5, 0)], ds[(5, 0)]
    assert a.shape == (3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(ds[(5, 0)], ds[(6, 0)])
    scales = [data.batch_scale(0, s, 1.0, 8.0) for s in range(200)]
    assert 1.0 <= min(scales) < 2 and 7 < max(scales) <= 8.0


def test_pairs():
    hr = torch.rand(2, 3, 64, 96)
    pair = make_pair(hr, 3.7, 4)
    assert pair.lr.shape == (2, 3, 17, 26) and pair.lr_up.shape == hr.shape
    assert pair.inv_scale.shape == (2, 1) and abs(pair.scale - 64 / 17) < 1e-9
    with pytest.raises(ValueError):
        make_pair(torch.rand(1, 3, 40, 64), 2.0, 4)


def test_schedules():
    lrs = [learning_rate(s, 1.0, 10, 100) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.02)
    assert ema_decay(0, 0.999) == pytest.approx(0.1) and ema_decay(10 ** 6, 0.999) == 0.999


def test_overfitting_one_batch():
    """Stage 1 can learn: from plain bicubic (the decoder's last layer starts at zero), 200 steps on
    four real 64×64 UC Merced crops at ×4 must cut the loss well below bicubic's. This shows the loss,
    its gradients and the optimiser's wiring, not capacity, so the ``tiny`` preset shows it as ``small``
    did (the mean of the last 10 losses is 0.52 of the first on tiny, 0.45 on small; the bound is 0.7)."""
    torch.manual_seed(0)
    crops = data.read_image(DATA / "ucmerced_crops.png")
    hr = torch.from_numpy(np.stack([crops[:, :, 64 * i:64 * i + 64] for i in range(4)]))
    stage = Stage1(Settings(data=str(DATA), out="", preset="tiny", crop=64, batch=4), torch.device("cpu"), None)
    stage.setup()
    opt = torch.optim.Adam([p for m in stage.nets.values() for p in m.parameters()], lr=2e-3)
    pair = make_pair(hr, 4.0, 1)
    losses = []
    for step in range(200):
        loss, _ = stage.loss(pair, torch.Generator().manual_seed(step), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * losses[0]


def test_stage1_starts_as_the_residual_pca_and_init_keeps_the_regression(stage1):
    """A fresh stage 1 encodes the residual's unit-variance PCA code (the learned correction starts at
    zero) and its detail path is the PCA synthesis, so decoding the true latent adds the residual's
    projection to the start decoder's zero-latent output; --init starts the decoder as the given
    model's decoder for a zero latent (apart from the detail path's constant, the mean block)."""
    from engine import modelfile
    from engine.models.encoder import pca, residual_blocks

    card, tensors = modelfile.load(stage1)
    old = modelfile.build_networks(card, tensors, ["decoder"], "cpu")["decoder"]
    settings = Settings(data=str(DATA), out="", preset="tiny", crop=64, batch=2, options={"init": str(stage1)})
    stage = Stage1(settings, torch.device("cpu"), None)
    stage.setup()
    torch.manual_seed(1)
    pair = make_pair(torch.rand(2, 3, 64, 64), 3.0, 1)
    enc, dec = stage.nets["encoder"], stage.nets["decoder"]
    with torch.no_grad():
        mean, components, std = pca(torch.cat([residual_blocks(p.hr, p.lr_up) for p in stage.stats_pairs(16)]), 16)
        code = (residual_blocks(pair.hr, pair.lr_up) - mean) @ components.T / std
        z = enc(pair.hr, pair.lr_up)
        torch.testing.assert_close(z.permute(0, 2, 3, 1).reshape(-1, 16), code, atol=1e-4, rtol=1e-4)
        z0 = torch.zeros(2, 16, 8, 8)

        def blocks(v):  # the same 8×8 block (bands·64 values) in every cell
            return torch.nn.functional.pixel_shuffle(v.reshape(1, -1, 1, 1).expand(2, -1, 8, 8), 8)

        torch.testing.assert_close(dec(*pair.decoder_inputs(z0)) - blocks(mean),
                                   old(*pair.decoder_inputs(z0)) - blocks(old.detail.bias), atol=1e-5, rtol=1e-5)
        projection = torch.nn.functional.pixel_shuffle(
            (code * std @ components).reshape(2, 8, 8, -1).permute(0, 3, 1, 2), 8)
        torch.testing.assert_close(dec(*pair.decoder_inputs(z)) - dec(*pair.decoder_inputs(z0)),
                                   projection, atol=1e-4, rtol=1e-4)


# the stages' base loss options (training.recipe), which the CLI's defaults (the bundle's recipe) override
PLAIN = {"stage1": ["--latent-dropout", "0", "--gan-weight", "0", "--gan-start", "0", "--no-detail-flat", "--synth", "0"],
         "stage2": ["--gan-weight", "0", "--lr-weight", "1", "--energy-weight", "0", "--features", "0", "--no-spread"]}


def train_args(command, images, out, steps, *extra):
    """A short tiny run of ``command`` with the plain losses, in float32 (the tests compare runs and losses
    closer than bf16 computes them; the precision's own test gives --precision); ``extra`` adds to them
    or overrides them."""
    return [command, "--data", str(images / "train"), "--val", str(images / "val"), "--out", str(out),
            "--steps", str(steps), "--crop", "32", "--batch", "2", "--ckpt-every", "2", "--val-every", "2",
            "--val-images", "1", "--val-crop", "32", "--warmup", "2", "--no-progress", "--preset", "tiny",
            "--precision", "float32", *PLAIN["stage1" if command == "stage1" else "stage2"], *extra]


@pytest.fixture(scope="module")
def stage1(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "stage1"
    assert main(train_args("stage1", images, out, 2)) == 0
    return out


def test_training_stages_and_bundle(images, stage1, tmp_path):
    for stage in ("e2diffsr", "lcmsr"):
        assert main(train_args(stage, images, tmp_path / stage, 2, "--stage1", str(stage1))) == 0
    for run in (stage1, tmp_path / "e2diffsr", tmp_path / "lcmsr"):
        state = json.loads((run / "checkpoint.json").read_text())
        assert state["step"] == 2 and len(state["history"]["loss"]) == 2 and len(state["history"]["val"]) == 1
        assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
        assert math.isfinite(state["history"]["val"][0][1])
        # stage 1 also validates the decoder with a zero latent (the latent's worth, in dB), stage 2 the
        # regression path (the conditioning net's latent)
        assert len(state["history"]["val"][0]) == 4
    exported = load_file(str(stage1 / "model.safetensors"))  # the EMA networks carry the PCA start
    assert exported["encoder.analysis.weight"].abs().sum() > 0 and exported["decoder.detail.bias"].ne(0).any()
    assert main(["bundle", "--stage1", str(stage1), "--e2diffsr", str(tmp_path / "e2diffsr"),
                 "--lcmsr", str(tmp_path / "lcmsr"), "--name", "test-rgb", "--out", str(tmp_path / "models")]) == 0
    folder = tmp_path / "models" / "test-rgb"
    card = json.loads((folder / "model.json").read_text())
    assert set(card["methods"]) == {"e2diffsr", "lcmsr", "regression"}
    for stage in ("stage1", "e2diffsr", "lcmsr"):  # the card records what each stage ran on, how long, how
        run = card["training"][stage]
        assert run["step"] == 2 and run["seconds"] >= 0 and run["hardware"].startswith("CPU: ") and run["ranks"] == 1
    assert card["training"]["lcmsr"]["options"]["cond_pixel_weight"] == 1.0
    assert card["training"]["stage1"]["options"]["kl_weight"] == pytest.approx(1e-4)
    assert not any(k.startswith("encoder") for k in load_file(str(folder / "model.safetensors")))
    x = np.random.default_rng(0).random((4, 19, 21), dtype=np.float32)
    for name in ("regression", "lcmsr", "e2diffsr"):
        out = build_method(name, MethodOptions(model=str(folder)))(x, Grid.whole(19, 21, 3.0))
        assert out.shape == (4, 57, 63) and np.all(np.isfinite(out))


def test_the_add_stage_continues_lcmsr_with_the_decoder_and_the_bundle_takes_both(images, stage1, tmp_path):
    """`add` (the recipe's last stage) starts LCMSR's networks from an LCMSR run folder and trains the
    stage-1 decoder beside them; the bundle takes LCMSR's networks and the decoder from it, decodes
    E²DiffSR with that decoder, and its card records the LCMSR run and the add run as two stages."""
    from engine import modelfile

    lcmsr, add = tmp_path / "lcmsr", tmp_path / "add"
    assert main(train_args("lcmsr", images, lcmsr, 2, "--stage1", str(stage1))) == 0
    assert main(train_args("e2diffsr", images, tmp_path / "e2diffsr", 2, "--stage1", str(stage1))) == 0
    from training.lcmsr import ADDStage

    settings = Settings(data=str(images / "train"), out=str(add), crop=32, batch=2, preset="tiny", stage1=str(stage1),
                        options={"init": str(lcmsr), "train_decoder": True, "decoder_fidelity": 4.0})
    stage = ADDStage(settings, torch.device("cpu"), None)
    stage.setup()
    start = load_file(str(lcmsr / "model.safetensors"))
    for role in ("condition", "denoiser"):  # it starts as the run it continues
        for k, v in stage.nets[role].state_dict().items():
            assert torch.equal(v, start[f"{role}.{k}"]), k
    frozen = modelfile.network_tensors(load_file(str(stage1 / "model.safetensors")), "decoder")
    for k, v in stage.nets["decoder"].state_dict().items():  # and stage 1's decoder
        assert torch.equal(v, frozen[k]), k
    assert main(train_args("add", images, add, 2, "--stage1", str(stage1), "--init", str(lcmsr))) == 0
    card = json.loads((add / "model.json").read_text())
    assert card["kind"] == "lcmsr" and card["training"]["stage"] == "add" and "decoder" in card["networks"]
    assert card["training"]["options"]["train_decoder"] is True and card["training"]["options"]["init"] == str(lcmsr)
    # add-e2diffsr: E²DiffSR continued through the add run's decoder, frozen in place of stage 1's
    e2diffsr, late = tmp_path / "e2diffsr", tmp_path / "add-e2diffsr"
    from training.e2diffsr import AddE2DiffSRStage

    settings = Settings(data=str(images / "train"), out=str(late), crop=32, batch=2, preset="tiny", stage1=str(stage1),
                        options={"init": str(e2diffsr), "decoder": str(add)})
    stage = AddE2DiffSRStage(settings, torch.device("cpu"), None)
    trained = modelfile.network_tensors(load_file(str(add / "model.safetensors")), "decoder")
    for k, v in stage.decoder.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert not any(p.requires_grad for p in stage.decoder.parameters())
    assert main(train_args("add-e2diffsr", images, late, 2, "--stage1", str(stage1), "--init", str(e2diffsr),
                           "--decoder", str(add))) == 0
    recorded = json.loads((late / "model.json").read_text())["training"]
    assert recorded["stage"] == "add-e2diffsr"
    assert recorded["options"]["decoder_sha256"] == json.loads((add / "model.json").read_text())["weights"]["sha256"]
    assert main(["bundle", "--stage1", str(stage1), "--e2diffsr", str(e2diffsr), "--lcmsr", str(lcmsr),
                 "--add", str(add), "--add-e2diffsr", str(late), "--name", "test-rgb", "--out", str(tmp_path / "models")]) == 0
    folder = tmp_path / "models" / "test-rgb"
    bundled = json.loads((folder / "model.json").read_text())
    assert set(bundled["training"]) == {"stage1", "e2diffsr", "lcmsr", "add", "add-e2diffsr"}
    assert bundled["training"]["lcmsr"]["stage"] == "lcmsr" and bundled["training"]["add"]["step"] == 2
    assert bundled["training"]["e2diffsr"]["stage"] == "e2diffsr" and bundled["training"]["add-e2diffsr"]["step"] == 2
    weights, trained = load_file(str(folder / "model.safetensors")), load_file(str(add / "model.safetensors"))
    for k, v in trained.items():
        assert torch.equal(weights[k if k.startswith("decoder.") else f"lcmsr.{k}"], v), k
    for k, v in load_file(str(late / "model.safetensors")).items():
        assert torch.equal(weights[f"e2diffsr.{k}"], v), k
    # a decoder that is not an add run's is refused in one line, and so is the bundle of an
    # add-e2diffsr run without the add run whose decoder it was trained through
    assert main(train_args("add-e2diffsr", images, tmp_path / "wrong", 2, "--stage1", str(stage1), "--init",
                           str(e2diffsr), "--decoder", str(lcmsr))) == 2
    assert not (tmp_path / "wrong").exists()
    assert main(["bundle", "--stage1", str(stage1), "--e2diffsr", str(e2diffsr), "--add-e2diffsr", str(late),
                 "--out", str(tmp_path / "other")]) == 2
    assert not (tmp_path / "other").exists()
    # a run of another kind in the place of the add run is refused in one line
    assert main(["bundle", "--stage1", str(stage1), "--lcmsr", str(lcmsr), "--add", str(lcmsr),
                 "--out", str(tmp_path / "other")]) == 2
    assert not (tmp_path / "other").exists()
    # so is a record of an LCMSR run trained on another stage-1 model than the bundle's
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(lcmsr, elsewhere)
    moved = json.loads((elsewhere / "model.json").read_text())
    moved["stage1"]["sha256"] = "0" * 64
    (elsewhere / "model.json").write_text(json.dumps(moved))
    assert main(["bundle", "--stage1", str(stage1), "--lcmsr", str(elsewhere), "--add", str(add),
                 "--out", str(tmp_path / "other")]) == 2
    assert not (tmp_path / "other").exists()


def test_an_existing_run_needs_resume(images, stage1, capsys):
    assert main(train_args("stage1", images, stage1, 4)) == 2  # a TrainingError, as one line
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "pass --resume" in err


@pytest.mark.parametrize("stage", ["stage1", "stage1-gan", "lcmsr", "lcmsr-gan", "e2diffsr", "e2diffsr-gan",
                                   "stage1-gan-bf16", "stage1-gan-float32", "lcmsr-gan-bf16"])
def test_resume_continues_exactly(images, stage1, tmp_path, stage):
    """Resuming gives the same weights, optimizer states (the discriminator's too) and history, in
    either precision (float32, train_args's, without a precision in the case's name)."""
    stage, *flags = stage.split("-")
    extra = [] if stage == "stage1" else ["--stage1", str(stage1)]
    if "gan" in flags:
        extra += ["--gan-weight", "0.1"] + (["--gan-start", "1"] if stage == "stage1" else ["--energy-weight", "1"])
    chosen = [f for f in flags if f in precision.CHOICES]
    extra += ["--precision", *chosen] if chosen else []
    assert main(train_args(stage, images, tmp_path / "straight", 4, *extra)) == 0
    assert main(train_args(stage, images, tmp_path / "resumed", 2, "--schedule-steps", "4", *extra)) == 0
    assert main(train_args(stage, images, tmp_path / "resumed", 4, "--resume", *extra)) == 0
    a = load_file(str(tmp_path / "straight" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    assert any(k.startswith("aux.discriminator_optim.") for k in a) == ("--gan-weight" in extra)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = json.loads((tmp_path / "straight" / "checkpoint.json").read_text())
    sb = json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())
    assert sa["history"] == sb["history"] and sa["step"] == sb["step"] == 4
    assert sb["seconds"] > 0  # the resumed run's wall time adds to the first part's
    assert sa["precision"] == sb["precision"] == (chosen or ["float32"])[0]


def test_the_last_stages_resume_exactly(images, stage1, tmp_path):
    """add and add-e2diffsr (with the PatchGAN) resumed give the same weights, optimizer states and
    history as a straight run: the decoder that add trains and the one add-e2diffsr reads included."""
    start = ["--stage1", str(stage1)]
    gan = ["--gan-weight", "0.1", "--energy-weight", "1"]
    for method in ("lcmsr", "e2diffsr"):
        assert main(train_args(method, images, tmp_path / method, 2, *start)) == 0
    runs = {"add": ["--init", str(tmp_path / "lcmsr")],
            "add-e2diffsr": ["--init", str(tmp_path / "e2diffsr"), "--decoder", str(tmp_path / "add" / "straight")]}
    for stage, extra in runs.items():
        out = tmp_path / stage
        assert main(train_args(stage, images, out / "straight", 4, *start, *gan, *extra)) == 0
        assert main(train_args(stage, images, out / "resumed", 2, "--schedule-steps", "4", *start, *gan, *extra)) == 0
        assert main(train_args(stage, images, out / "resumed", 4, "--resume", *start, *gan, *extra)) == 0
        a = load_file(str(out / "straight" / "checkpoint.safetensors"))
        b = load_file(str(out / "resumed" / "checkpoint.safetensors"))
        assert a.keys() == b.keys() and any(k.startswith("aux.discriminator_optim.") for k in a)
        assert any(k.startswith("model.decoder.") for k in a) == (stage == "add")
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)
        sa, sb = (json.loads((out / run / "checkpoint.json").read_text()) for run in ("straight", "resumed"))
        assert sa["history"] == sb["history"] and sa["step"] == sb["step"] == 4


def spiking(monkeypatch, at, **guard):
    """Stage 1 whose loss is 1e4 times itself at the step indices where ``at(step)`` holds (so its gradient
    is too), under a guard with ``guard``'s settings (a warmup of 2 admitted steps unless given)."""
    from training import trainer
    from training.spikes import StepGuard

    loss = Stage1.loss

    def spiked(self, pair, gen, ema):
        value, logs = loss(self, pair, gen, ema)
        return (value * 1e4 if at(self.step) else value), logs

    monkeypatch.setattr(Stage1, "loss", spiked)
    monkeypatch.setattr(trainer, "StepGuard", lambda factor: StepGuard(factor, **{"warmup": 2, **guard}))


def test_a_spiked_step_is_skipped_and_the_guard_resumes_exactly(images, tmp_path, monkeypatch):
    """One update whose gradient is 1e4 times the usual is skipped (weights and optimizer as they were),
    recorded in the history and the card; a run resumed across it ends as the straight run does."""
    spiking(monkeypatch, at=lambda step: step == 4)  # the 5th update
    assert main(train_args("stage1", images, tmp_path / "straight", 6)) == 0
    assert main(train_args("stage1", images, tmp_path / "resumed", 4, "--schedule-steps", "6")) == 0
    shutil.copytree(tmp_path / "resumed", tmp_path / "five")
    assert main(train_args("stage1", images, tmp_path / "five", 5, "--resume")) == 0
    before = load_file(str(tmp_path / "resumed" / "checkpoint.safetensors"))
    after = load_file(str(tmp_path / "five" / "checkpoint.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the 5th update was skipped whole
    assert main(train_args("stage1", images, tmp_path / "resumed", 6, "--resume")) == 0
    a = load_file(str(tmp_path / "straight" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["model.decoder.head.weight"],
                                                                     before["model.decoder.head.weight"])
    sa, sb = (json.loads((tmp_path / run / "checkpoint.json").read_text()) for run in ("straight", "resumed"))
    assert sa["history"] == sb["history"] and sa["guard"] == sb["guard"]
    assert [step for step, _ in sa["history"]["skipped"]] == [5] and sa["history"]["skipped"][0][1] > 100
    assert len(sa["guard"]["recent"]) == 5 and sa["guard"]["in_a_row"] == 0
    card = json.loads((tmp_path / "straight" / "model.json").read_text())
    assert card["training"]["skipped_steps"] == 1


def test_the_guard_is_stage_1s_and_can_be_turned_off_or_refused(images, stage1, tmp_path, monkeypatch, capsys):
    """Stage 1 is guarded by the recipe's factor, the other stages (whose critic makes their gradients
    heavy-tailed) are not unless asked; --guard 0 turns it off; a factor of 1 or less is refused in one line."""
    from training import recipe

    spiking(monkeypatch, at=lambda step: step == 4)
    assert recipe.STAGE1["guard"] > 1 and "guard" not in recipe.STAGE2
    assert main(train_args("stage1", images, tmp_path / "off", 6, "--guard", "0")) == 0
    state = json.loads((tmp_path / "off" / "checkpoint.json").read_text())
    assert state["history"]["skipped"] == [] and state["guard"] is None
    assert json.loads((tmp_path / "off" / "model.json").read_text())["training"]["guard"] == 0
    assert main(train_args("stage1", images, tmp_path / "off", 8, "--resume")) == 0  # resumed with the guard on
    state = json.loads((tmp_path / "off" / "checkpoint.json").read_text())
    assert state["step"] == 8 and len(state["guard"]["recent"]) == 2 and state["history"]["skipped"] == []
    assert main(train_args("lcmsr", images, tmp_path / "lcmsr", 2, "--stage1", str(stage1))) == 0
    assert json.loads((tmp_path / "lcmsr" / "checkpoint.json").read_text())["guard"] is None
    capsys.readouterr()
    assert main(train_args("stage1", images, tmp_path / "bad", 2, "--guard", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --guard must be 0 (off) or a factor greater than 1, got 1" and not (tmp_path / "bad").exists()


def test_a_run_whose_every_step_spikes_stops_in_one_line(images, tmp_path, monkeypatch, capsys):
    spiking(monkeypatch, at=lambda step: step >= 4, patience=3)
    assert main(train_args("stage1", images, tmp_path / "run", 10)) == 2
    *lines, err = capsys.readouterr().err.strip().splitlines()  # the log's lines (what it shows depends on its level), then the error
    assert [w.split(":")[0] for w in lines if "skipped" in w] == ["step 5 skipped", "step 6 skipped", "step 7 skipped"]
    assert err.startswith("error: training diverged at step 7") and err.endswith("resume it with a lower --lr")
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["step"] == 6 and [s for s, _ in state["history"]["skipped"]] == [5, 6]


def test_precision_falls_back_to_float32_without_bf16_units(images, tmp_path, monkeypatch, capsys):
    """auto: bf16 only where the CPU's flags say it computes bfloat16 (AMX or AVX-512 BF16) or the GPU has bfloat16. A run records its
    precision in its checkpoint and card, a resume keeps it whatever the machine has, and an explicit
    other one is refused; bf16 really changes the arithmetic."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"fpu", "avx512f", "avx2"})
    cpu = torch.device("cpu")
    assert precision.choose("auto", cpu) == "float32" and precision.choose("float32", cpu) == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})  # bf16 without AMX: 1.6-1.7x here
    assert precision.choose("auto", cpu) == "bf16" and precision.choose("float32", cpu) == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    assert precision.choose("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.choose("auto", torch.device("cuda")) == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.choose("auto", torch.device("cuda")) == "bf16"

    monkeypatch.setattr(precision, "cpu_flags", lambda: set())  # a CPU without bf16
    assert main(train_args("stage1", images, tmp_path / "plain", 2, "--precision", "auto")) == 0
    card = json.loads((tmp_path / "plain" / "model.json").read_text())
    assert card["training"]["precision"] == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})  # resumed on one with it
    assert main(train_args("stage1", images, tmp_path / "plain", 4, "--resume", "--precision", "auto")) == 0
    assert json.loads((tmp_path / "plain" / "checkpoint.json").read_text())["precision"] == "float32"
    assert json.loads((tmp_path / "plain" / "model.json").read_text())["training"]["precision"] == "float32"
    capsys.readouterr()
    assert main(train_args("stage1", images, tmp_path / "plain", 6, "--resume", "--precision", "bf16")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained in float32" in err
    assert main(train_args("stage1", images, tmp_path / "bf16", 4, "--precision", "auto")) == 0  # auto on this CPU: bf16
    assert json.loads((tmp_path / "bf16" / "model.json").read_text())["training"]["precision"] == "bf16"
    a = load_file(str(tmp_path / "plain" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "bf16" / "checkpoint.safetensors"))
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))


def test_stage2_adversary_starts_from_stage1_and_trains_the_sample(images, tmp_path):
    """The stage-2 discriminator starts from the stage-1 run's; the adversarial term reaches the
    denoiser through the decoded sample, and not the conditioning net (the regression path)."""
    from training.lcmsr import LCMSRStage

    gan = ["--gan-weight", "0.1"]
    assert main(train_args("stage1", images, tmp_path / "stage1", 2, *gan)) == 0
    ckpt = load_file(str(tmp_path / "stage1" / "checkpoint.safetensors"))
    settings = Settings(data=str(images / "train"), out=str(tmp_path / "lcmsr"), crop=32, batch=2, preset="tiny",
                        stage1=str(tmp_path / "stage1"), options={"gan_weight": 0.1, "lr_weight": 1.0})
    stage = LCMSRStage(settings, torch.device("cpu"), None)
    stage.setup()
    for k, v in stage.adversary.net.state_dict().items():
        assert torch.equal(v, ckpt[f"aux.discriminator.{k}"]), k
    pair = next(stage.stats_pairs(1))
    adv, logs = stage.adversarial(pair, stage.f(stage.nets, torch.randn_like(stage.target(pair)),
                                                stage.condition(stage.nets, pair).detach(),
                                                torch.full((2,), 1000), pair.inv_scale))
    assert set(logs) == {"d", "g", "lr"} and all(math.isfinite(v) for v in logs.values())
    own = [p.grad.clone() for p in stage.adversary.net.parameters()]  # from its own update
    adv.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.nets["denoiser"].parameters())
    assert all(p.grad is None for p in stage.nets["condition"].parameters())
    assert all(torch.equal(p.grad, g) for p, g in zip(stage.adversary.net.parameters(), own))


def test_energy_score_prefers_the_truths_own_spread():
    """Two samples drawn from the truth's distribution score better than two copies of its median (which
    L1 prefers) and than samples spread twice as wide."""
    from training.latent import energy_score

    g = torch.Generator().manual_seed(0)
    truth = torch.randn(200000, generator=g)
    draw = lambda k: k * torch.randn(200000, generator=g)  # noqa: E731
    zero = torch.zeros(200000)
    assert float(energy_score(zero, zero, truth)) == pytest.approx(float(truth.abs().mean()))
    assert float(energy_score(draw(1.0), draw(1.0), truth)) < float(energy_score(zero, zero, truth)) - 0.2
    assert float(energy_score(draw(1.0), draw(1.0), truth)) < float(energy_score(draw(2.0), draw(2.0), truth)) - 0.05


def test_calibration_gap_asks_the_spread_to_sit_where_the_error_is():
    """training.latent.calibration_gap: three draws from one distribution (whose scale varies over the
    image) agree with its ratio to within 2 % of their error; the gradient never moves the samples'
    mean (the error is held); and a step down it moves a spread that is even over the image toward
    the half where the mean is wrong, and lowers the gap."""
    from training.latent import CALIBRATION_RATIO, calibration_gap, local_mean

    g = torch.Generator().manual_seed(0)
    sigma = torch.linspace(0.1, 2.0, 256).view(1, 1, 1, 256).expand(1, 3, 256, 256)
    a, b, y = (sigma * torch.randn(1, 3, 256, 256, generator=g) for _ in range(3))
    error = ((a + b) / 2 - y).abs().mean(1, keepdim=True)
    assert float(calibration_gap(a, b, y)) < 0.5 * float(error.mean())
    ratio = float((a - b).abs().mean() / ((a + b) / 2 - y).abs().mean())
    assert ratio == pytest.approx(CALIBRATION_RATIO, rel=0.02)
    flat = torch.ones(1, 1, 9, 9)
    assert torch.allclose(local_mean(flat), flat)

    half = torch.cat([torch.zeros(1, 3, 32, 16), torch.ones(1, 3, 32, 16)], 3)  # the mean is wrong on the right
    noise = torch.randn(1, 3, 32, 32, generator=g).sign()
    a = (0.5 * noise).requires_grad_(True)
    b = (-0.5 * noise).requires_grad_(True)
    gap = calibration_gap(a, b, half)
    ga, gb = torch.autograd.grad(gap, (a, b))
    assert float((ga + gb).abs().max()) < 1e-7
    step = 0.5 / float(ga.abs().max())
    a2, b2 = (a - step * ga).detach(), (b - step * gb).detach()
    spread = (a2 - b2).abs().mean((0, 1, 2))
    assert float(spread[16:].mean()) > 1.0 > float(spread[:16].mean())
    assert float(calibration_gap(a2, b2, half)) < float(gap.detach()) - 0.1


def loss_added_by(images, stage1, tmp_path, flag, option, weight, *extra):
    """What ``flag`` at ``weight`` adds to the first step's loss of a short LCMSR run with the PatchGAN
    and the energy score (two samples), against the same run at 0 from the same start; the card
    records ``option`` only when it is set."""
    first = {}
    for w in (0.0, float(weight)):
        out = tmp_path / f"w{w:g}"
        assert main(train_args("lcmsr", images, out, 1, "--stage1", str(stage1), "--gan-weight", "0.1",
                               "--energy-weight", "1", *extra, flag, str(w))) == 0
        first[w] = json.loads((out / "checkpoint.json").read_text())["history"]["loss"][0][1]
        options = json.loads((out / "model.json").read_text())["training"]["options"]
        assert options.get(option) == (w if w else None)
    return first[float(weight)] - first[0.0]


def test_calibration_weight_adds_its_weight_times_the_gap(images, stage1, tmp_path, monkeypatch):
    """--calibration-weight W adds W × the calibration gap of the two decoded samples to a step's loss
    (the first step of two runs from the same start differs by exactly that), and the card records it
    only when it is set."""
    from training import latent

    seen = []
    gap = latent.calibration_gap

    def spy(a, b, truth):
        value = gap(a, b, truth)
        seen.append(float(value.detach()))
        return value

    monkeypatch.setattr(latent, "calibration_gap", spy)
    added = loss_added_by(images, stage1, tmp_path, "--calibration-weight", "calibration_weight", 5)
    assert len(seen) == 1 and seen[0] > 0
    assert added == pytest.approx(5 * seen[0], rel=1e-4)
    bare = main(train_args("lcmsr", images, tmp_path / "bare", 1, "--stage1", str(stage1), "--calibration-weight", "5"))
    assert bare == 2 and not (tmp_path / "bare").exists()


def test_sample_fidelity_adds_its_weight_times_the_samples_l1(images, stage1, tmp_path, monkeypatch):
    """--sample-fidelity W adds W × the mean L1 of the two decoded samples against HR to a step's loss
    (the first step of two runs from the same start differs by exactly that), and the card records it;
    without it the option is left out of the card, as in runs from before it."""
    from training import latent

    seen = []
    adversarial = latent.LatentStage.adversarial

    def spy(self, pair, sample, second=None, **kw):
        loss, logs = adversarial(self, pair, sample, second, **kw)
        sr = [pair.keep_valid(self.decode(pair, s, self.nets)) for s in (sample, second)]
        seen.append(float(sum((x - pair.hr).abs().mean() for x in sr).detach()) / 2)
        return loss, logs

    monkeypatch.setattr(latent.LatentStage, "adversarial", spy)
    added = loss_added_by(images, stage1, tmp_path, "--sample-fidelity", "sample_fidelity", 5)
    assert seen[0] == pytest.approx(seen[1]) and seen[0] > 0
    assert added == pytest.approx(5 * seen[0], rel=1e-4)


def test_lattice_power_is_the_benchs_lattice_measure():
    """training.adversary.lattice_power's two sums give engine.metrics.lattice per image, at an integer and
    a fractional scale, for details with and without a pattern locked to the LR pixels; below ×2 None."""
    from engine import metrics
    from training.adversary import lattice_power

    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(80.0), indexing="ij")
    for scale in (4.0, 3.3):
        cross = torch.cos(2 * math.pi * x / scale) + torch.cos(2 * math.pi * y / scale)
        detail = torch.randn(3, 3, 64, 80, generator=g, dtype=torch.float64)
        detail[1] += 0.5 * cross
        peak, background = lattice_power(detail, scale)
        mine = 10 * torch.log10(peak / background)
        bench = [metrics.lattice(d.numpy(), scale) for d in detail]
        assert mine.tolist() == pytest.approx(bench, abs=1e-9)
        assert bench[1] > 5 > 1 > max(abs(bench[0]), abs(bench[2]))
    assert lattice_power(torch.randn(1, 3, 32, 32), 1.9) is None


def test_lattice_excess_asks_only_the_lr_pixel_frequency_to_fall():
    """lattice_excess is 0 for a sample whose added detail has HR's lattice or less, and below ×2; for one
    with a cross-hatch at the LR pixel period it is its ratio above HR's, and its gradient, a step against
    which lowers the lattice, sits at the harmonics' frequencies along either axis (in each row or column
    its own cosine): the rest of the detail is left alone."""
    from engine import metrics
    from training.adversary import lattice_excess, lattice_power

    g = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    cross = torch.cos(2 * math.pi * x / 4) + torch.cos(2 * math.pi * y / 4)
    regression = torch.rand(2, 3, 96, 96, generator=g)
    texture = 0.05 * torch.randn(2, 3, 96, 96, generator=g)
    hr = regression + texture
    assert float(lattice_excess(hr.clone(), regression, hr, 4.0)) == 0.0
    assert float(lattice_excess(regression + 0.05 * torch.randn(2, 3, 96, 96, generator=g), regression, hr, 1.5)) == 0.0
    sr = (regression + 0.05 * torch.randn(2, 3, 96, 96, generator=g) + 0.02 * cross).requires_grad_(True)
    excess = lattice_excess(sr, regression, hr, 4.0)
    before = [metrics.lattice((sr - regression)[i].detach().numpy(), 4.0) for i in range(2)]
    truth = [metrics.lattice((hr - regression)[i].numpy(), 4.0) for i in range(2)]
    _, background = lattice_power((sr - regression).detach(), 4.0)
    _, hr_background = lattice_power(hr - regression, 4.0)
    # the peak above HR's ratio times the sample's background, over HR's background, summed over the batch
    above = [(10 ** (b / 10) - 10 ** (t / 10)) * float(g) for b, t, g in zip(before, truth, background)]
    assert excess.item() == pytest.approx(sum(above) / float(hr_background.sum()), rel=1e-4)
    # the texture here is as strong as HR's, so that is about the mean excess of the ratio
    assert excess.item() == pytest.approx(np.mean([10 ** (b / 10) - 10 ** (t / 10) for b, t in zip(before, truth)]), rel=0.1)
    excess.backward()
    grad = sr.grad.mean(1)[0].double()
    power = torch.fft.fft2(grad).abs() ** 2
    at = torch.zeros(96, 96, dtype=torch.bool)
    at[:, [24, 48, 72]] = at[[24, 48, 72], :] = True  # ±0.25 and 0.5 cycles/pixel along x or y
    harmonics = power[at].sum()
    assert float(harmonics / power.sum()) > 0.99
    after = (sr - 0.01 * sr.grad / sr.grad.abs().max() - regression).detach()
    assert metrics.lattice(after[0].numpy(), 4.0) < before[0] - 1
    # a sample whose added detail is a faint pattern: the gradient shrinks with it instead of growing
    norms = []
    for amplitude in (1e-2, 1e-4):
        faint = (regression + amplitude * (cross + 0.1 * torch.randn(2, 3, 96, 96, generator=g))).requires_grad_(True)
        lattice_excess(faint, regression, hr, 4.0).backward()
        norms.append(float(faint.grad.norm()))
    assert 0 < norms[1] < norms[0] / 10


def test_detail_spectrum_gap_asks_the_added_detail_for_hrs_spectrum():
    """detail_spectrum_gap reads the lattice figure's power (engine.metrics.axis_power) at every bin from
    0.125 cycles/pixel to Nyquist on both axes; it is 0 for a sample whose added detail is HR's, grows
    with a missing band (detail that stops at 1/scale: the cliff of docs/spectrum.png) and with a peak,
    and a step against its gradient (which reaches only the sample) brings the missing band back."""
    from engine import metrics
    from training.adversary import axis_spectra, detail_spectrum_gap

    g = torch.Generator().manual_seed(2)
    detail = torch.randn(2, 3, 96, 80, generator=g, dtype=torch.float64)
    spectra = axis_spectra(detail)
    img = detail.mean(1)[0].numpy()
    bench = np.concatenate([metrics.axis_power(img, 0)[12:], metrics.axis_power(img, 1)[10:]])
    assert spectra[0].numpy() == pytest.approx(bench, rel=1e-9)

    regression = torch.rand(2, 3, 96, 96, generator=g)
    texture = 0.05 * torch.randn(2, 3, 96, 96, generator=g)
    hr = regression + texture
    assert float(detail_spectrum_gap(hr.clone(), regression, hr)) == pytest.approx(0.0, abs=1e-6)
    f = torch.fft.fftfreq(96)
    below = (torch.maximum(f.abs()[:, None], f.abs()[None, :]) < 0.25).double()  # what a ×4 cliff keeps
    cliff = torch.fft.ifft2(torch.fft.fft2(texture.double()) * below).real.float()
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    peak = texture + 0.05 * (torch.cos(2 * math.pi * x / 4) + torch.cos(2 * math.pi * y / 4))
    gaps = [float(detail_spectrum_gap(regression + d, regression, hr)) for d in (texture, cliff, peak)]
    assert gaps[0] < 1e-6 < 1.0 < gaps[1] and gaps[2] > 0.05
    sr = (regression + cliff).requires_grad_(True)
    detail_spectrum_gap(sr, regression, hr).backward()
    above = (sr - regression - 0.02 * sr.grad / sr.grad.abs().max()).detach()
    assert float(detail_spectrum_gap(regression + above, regression, hr)) < gaps[1] - 0.1


@pytest.mark.parametrize("term, flag, option, weight", [
    ("lattice_excess", "--lattice-weight", "lattice_weight", 50.0),
    ("detail_spectrum_gap", "--spectrum-weight", "spectrum_weight", 3.0)])
def test_a_detail_term_adds_its_weight_times_its_value_on_the_samples(images, stage1, tmp_path, monkeypatch,
                                                                      term, flag, option, weight):
    """--lattice-weight W adds W × the mean lattice excess of the two decoded samples over HR's, and
    --spectrum-weight W W × the mean gap of their added detail's spectrum to HR's, their added detail
    taken against the regression path (the latent guess decoded by the same decoder, no gradient), to
    a step's loss (the first step of two runs from the same start differs by exactly that), and the
    card records the option only when it is set."""
    from training import latent

    seen, calls = [], []
    measure = getattr(latent, term)

    def spy(sr, regression, hr, *scale):
        value = measure(sr, regression, hr, *scale)
        calls.append((regression, scale))
        seen.append(float(value.detach()))
        return value

    monkeypatch.setattr(latent, term, spy)
    added = loss_added_by(images, stage1, tmp_path, flag, option, weight, "--scales", "4", "4")
    assert len(seen) == 2 and sum(seen) > 0 and not calls[0][0].requires_grad
    assert calls[0][1] == ((4.0,) if term == "lattice_excess" else ())
    assert added == pytest.approx(weight * sum(seen) / 2, rel=1e-4, abs=1e-6)


def test_unroll_judges_the_samplers_own_samples(images, stage1, tmp_path, monkeypatch):
    """e2diffsr --unroll: the two samples that the adversarial terms judge are E²DiffSR's samples at
    D = 1 as the engine draws them (engine.latent.sample_latent with the card's chain, from the same
    start noise, through the step's networks), and the gradient reaches the denoiser through the chain;
    the card records the option only when it is set."""
    from engine import latent as engine_latent
    from engine.card import MethodSpec
    from engine.registry import E2DIFFSR
    from training import e2diffsr, latent
    from training.bundle import method_spec

    starts, checked = [], []
    ddim = e2diffsr.sample_ddim

    def record(model, x, schedule, extra_args=None, noise=None):
        starts.append((x.clone(), extra_args))
        return ddim(model, x, schedule, extra_args, noise)

    adversarial = latent.LatentStage.adversarial

    def spy(self, pair, sample, second=None, **kw):
        spec = MethodSpec.parse(self.method, method_spec(self.method, self.latent_scale, self.export_card()),
                                self.layout.latent)
        for judged, (start, extra) in zip((sample, second), starts[-2:]):
            with torch.no_grad():
                engine = engine_latent.sample_latent(E2DIFFSR, spec, spec.steps, lambda i: self.nets["denoiser"](*i),
                                                     extra["cond"], extra["inv_scale"], lambda k: start)
            checked.append(float((judged.detach() - engine).abs().max()))
        denoiser = list(self.nets["denoiser"].parameters())
        grads = torch.autograd.grad(sample.square().sum(), denoiser, retain_graph=True, allow_unused=True)
        checked.append(sum(float(g.abs().sum()) for g in grads if g is not None))
        return adversarial(self, pair, sample, second, **kw)

    monkeypatch.setattr(e2diffsr, "sample_ddim", record)
    monkeypatch.setattr(latent.LatentStage, "adversarial", spy)
    gan = ["--stage1", str(stage1), "--gan-weight", "0.1", "--energy-weight", "1", "--spread", "--features", "2"]
    for unroll in ("--unroll", "--no-unroll"):
        out = tmp_path / unroll
        assert main(train_args("e2diffsr", images, out, 1, *gan, unroll)) == 0
        options = json.loads((out / "model.json").read_text())["training"]["options"]
        assert options.get("unroll") is (True if unroll == "--unroll" else None)
        if unroll == "--unroll":
            assert len(starts) == 2 and len(checked) == 3
            assert checked[0] < 1e-5 and checked[1] < 1e-5 and checked[2] > 0
    assert len(starts) == 2  # without it, no chain is run


def test_lr_consistency_is_zero_for_the_image_that_made_the_lr():
    from training.adversary import lr_consistency

    hr = torch.rand(2, 3, 64, 64)
    pair = make_pair(hr, 4.0, 1)
    assert float(lr_consistency(pair.hr, pair)) < 1e-6
    assert float(lr_consistency(pair.hr + 0.1, pair)) == pytest.approx(0.1, abs=0.02)


def test_stage2_bench_judges_a_run_before_bundling(images, stage1, tmp_path, caplog):
    """python -m training.bench stage2: the rows at each scale, the two-seed spread and the spread-vs-texture
    line, all finite, on a real (tiny) stage-1 and LCMSR run."""
    from training import bench

    assert main(train_args("lcmsr", images, tmp_path / "lcmsr", 2, "--stage1", str(stage1))) == 0
    caplog.set_level("INFO")
    assert bench.main(["stage2", "--stage1", str(stage1), "--stage2", str(tmp_path / "lcmsr"), "--val", str(images / "val"),
                       "--images", "1", "--crop", "64", "--details", "0.5", "1"]) == 0
    lines = [r.getMessage() for r in caplog.records]
    for scale in ("×2", "×4"):
        for label in ("bicubic", "stage 1, true latent", "regression (D = 0)", "lcmsr, D = 0.5", "lcmsr, D = 1"):
            line = next(m for m in lines if m.startswith(f"{scale}  {label} "))
            gain, distance = (float(v) for v in line[len(scale) + 2 + 26:].split("/"))
            assert math.isfinite(gain) and math.isfinite(distance)
    assert next(m for m in lines if m.startswith("×4  bicubic")).split()[-3] == "+0.00"
    spread = next(m for m in lines if "corr(std, |error|)" in m)
    assert "nan" not in spread
    assert bench.main(["stage2", "--stage1", str(tmp_path / "lcmsr"), "--stage2", str(stage1)]) == 2  # one line


def test_the_cards_and_benchmarks_name_the_cpu_alike(monkeypatch):
    """One cpu_name (training.trainer) for the model card's hardware and the backends benchmark;
    without /proc/cpuinfo it falls back to the platform's processor, then its machine."""
    from training import trainer
    from training.bench import backends

    rows = [{"method": "regression", "backend": b, "steps": None, "seconds": 1.0, "seconds_per_mp": 1.0,
             "peak_rss_mb": 100.0} for b in ("torch", "onnx")]
    monkeypatch.setattr(trainer, "cpu_name", lambda: "the test's CPU")
    assert "threads on the test's CPU;" in backends.markdown(rows, None, 64, 2.0, 1, 2)
    assert "CPU: the test's CPU," in trainer.hardware(torch.device("cpu"))
    monkeypatch.undo()

    def no_cpuinfo(*args, **kwargs):
        raise OSError("no /proc/cpuinfo")

    monkeypatch.setattr("builtins.open", no_cpuinfo)
    monkeypatch.setattr(trainer.platform, "processor", lambda: "")
    monkeypatch.setattr(trainer.platform, "machine", lambda: "riscv64")
    assert trainer.cpu_name() == "riscv64"


def test_a_window_fills_nodata_by_inferences_rule_deeper():
    """Training's fill (training.batch.fill_nodata) and inference's (engine.render.fill_invalid) are
    one rule at two depths: within inference's 2 pixels they give the same values; further in,
    inference takes the band's fill value and training goes on from the neighbours, 16 deep."""
    from engine import render
    from training import batch

    assert (render.FILL_ITERATIONS, batch.WINDOW_FILL_DEPTH) == (2, 16)
    hr = torch.from_numpy(texture(24, 24, 3).transpose(2, 0, 1)[None].astype(np.float32) / 255)
    valid = torch.ones(1, 1, 24, 24)
    valid[..., 4:14, 6:20] = 0  # a hole 5 pixels deep
    trained = batch.fill_nodata(torch.where(valid > 0, hr, torch.nan), valid)[0].numpy()
    inferred = render.fill_invalid(hr[0].numpy(), valid[0].numpy() > 0, np.full(3, -1.0, dtype=np.float32))
    ring = inferred[0] != -1.0
    assert ring.sum() > valid[0, 0].sum() and not ring.all()  # inference's 2 pixels, then the fill value
    np.testing.assert_allclose(trained[:, ring], inferred[:, ring], rtol=1e-6)
    assert np.isfinite(trained).all() and trained.min() >= 0


@pytest.mark.parametrize("name", ["default", "small", "tiny"])
def test_the_discriminator_is_sized_by_the_presets(name):
    """The PatchGAN's sizes are in engine.models.PRESETS beside the other networks' (they were a
    table of training.adversary's own), the same sizes as before."""
    from engine.models import PRESETS
    from training.adversary import Adversary

    net = Adversary(3, name, torch.device("cpu")).net
    assert net.config["channels"] == PRESETS[name]["discriminator"]["channels"] == \
        {"default": [32, 64, 128], "small": [16, 32, 64], "tiny": [8, 8, 8]}[name]
    assert [conv.out_channels for conv in net.body] == PRESETS[name]["discriminator"]["channels"]


def test_benchmarks_have_one_entry_point(capsys):
    from training import bench

    assert bench.main([]) == 2 and bench.main(["evaluate"]) == 2
    usage = "usage: python -m training.bench {quality,backends,scale,speed,cluster,stage2,step,precision,zoom,parts} [options]"
    assert capsys.readouterr().err.splitlines() == [usage, usage]
    with pytest.raises(SystemExit) as done:  # argparse's --help: each kind is a module of training/bench/
        bench.main(["backends", "--help"])
    assert done.value.code == 0 and "python -m training.bench backends" in capsys.readouterr().out


def test_spread_and_features_reach_the_denoiser_and_not_the_decoder(images, stage1, tmp_path):
    """--spread --features: the conditioning net gives the denoiser the latent's spread and LR
    features beside its latent guess. The denoiser's losses train the features but leave the guess
    (the regression path) and the spread alone; the spread is trained by its own likelihood and
    scales the sampler's residual; the bundle says so, its engine decodes only latents, and its ONNX
    graphs match torch."""
    from training import export
    from training.lcmsr import LCMSRStage

    extra = ["--stage1", str(stage1), "--features", "2", "--spread"]
    for stage in ("e2diffsr", "lcmsr"):
        assert main(train_args(stage, images, tmp_path / stage, 2, *extra)) == 0
    settings = Settings(data=str(images / "train"), out=str(tmp_path / "probe"), crop=32, batch=2, preset="tiny",
                        stage1=str(stage1), options={"features": 2, "spread": True})
    stage = LCMSRStage(settings, torch.device("cpu"), None)
    pair = next(stage.stats_pairs(1))
    x0 = stage.target(pair)
    latent = x0.shape[1]
    # the spread's prior fitted to latents whose deviation grows as texture^0.8 · scale^0.5 follows it,
    # at the Laplace likelihood's own level (the mean of |x0| / spread is 1)
    net = stage.nets["condition"]
    pairs = [make_pair(pair.hr, scale, 4) for scale in (2.0, 3.0, 4.0, 6.0)]
    torch.manual_seed(0)
    with torch.no_grad():
        inputs = [net.spread_inputs(net.upsample(p.lr, *p.condition_inputs().hr_tables), p.inv_scale) for p in pairs]
        truth = [torch.exp(0.8 * i[:, :1] + 0.5 * i[:, 1:] + 3.0).expand(-1, latent, -1, -1) for i in inputs]
        latents = [t * torch.distributions.Laplace(0.0, 1.0).sample(t.shape) for t in truth]
        stage.fit_spread_prior(pairs, latents)
        fitted = torch.cat([net.spread_prior(i) for i in inputs]).exp()
    truth, latents = torch.cat(truth), torch.cat(latents)
    assert np.corrcoef(fitted.log().flatten(), truth.log().flatten())[0, 1] > 0.8
    assert float((latents.abs() / fitted).mean()) == pytest.approx(1.0, abs=0.05)
    torch.nn.init.normal_(stage.nets["condition"].out.weight, std=0.01)  # every part nonzero, so each could move
    cond = stage.condition(stage.nets, pair)
    assert cond.shape[1] == 2 * latent + 2 and stage.guess(cond).shape[1] == latent
    spread = cond[:, latent:2 * latent].exp()
    r = torch.randn_like(x0)
    assert torch.allclose(stage.clean(cond, r), stage.guess(cond) + spread * r)
    assert torch.allclose(stage.residual(stage.clean(cond, r), cond), r, atol=1e-5)
    stage.f(stage.nets, r, stage.held(cond), torch.full((2,), 500), pair.inv_scale).square().mean().backward()
    grad = stage.nets["condition"].out.weight.grad
    assert grad[:2 * latent].abs().sum() == 0 and grad[2 * latent:].abs().sum() > 0
    stage.nets["condition"].zero_grad()
    stage.cond_loss(stage.condition(stage.nets, pair), x0, pair)[0].backward()
    assert stage.nets["condition"].out.weight.grad[latent:2 * latent].abs().sum() > 0  # the spread's likelihood

    assert main(["bundle", "--stage1", str(stage1), "--e2diffsr", str(tmp_path / "e2diffsr"),
                 "--lcmsr", str(tmp_path / "lcmsr"), "--name", "feat-rgb", "--out", str(tmp_path / "models")]) == 0
    folder = tmp_path / "models" / "feat-rgb"
    export.export(str(folder))
    card = json.loads((folder / "model.json").read_text())
    assert {m: s.get("features") for m, s in card["methods"].items()} == {"e2diffsr": 2, "lcmsr": 2, "regression": 2}
    x = np.random.default_rng(0).random((3, 19, 21), dtype=np.float32)
    for name, detail in (("regression", None), ("lcmsr", 0.5), ("lcmsr", 1.0), ("e2diffsr", 0.5)):
        outs = [build_method(name, MethodOptions(backend=b, model=str(folder), detail=detail))(x, Grid.whole(19, 21, 3.0), 4)
                for b in ("torch", "onnx")]
        assert outs[0].shape == (3, 57, 63)
        assert np.allclose(outs[0], outs[1], atol=1e-4), (name, detail, np.abs(outs[0] - outs[1]).max())


def test_bf16_runs_on_channels_last_weights(images, tmp_path):
    """Under bf16 every network a step runs (the critic and the EMA too) has channels_last weights; in
    float32 they keep the plain layout."""
    from training.trainer import Trainer

    for prec, layout in (("bf16", torch.channels_last), ("float32", torch.contiguous_format)):
        settings = Settings(data=str(images / "train"), out=str(tmp_path / prec), crop=32, batch=2, preset="tiny",
                            precision=prec, options={"gan_weight": 0.1})
        t = Trainer(Stage1, settings)
        nets = t.stage.modules() + list(t.ema.values())
        assert t.stage.adversary.net in nets
        weights = [p for net in nets for p in net.parameters() if p.dim() == 4 and p.shape[-1] > 1]
        assert weights and all(p.is_contiguous(memory_format=layout) for p in weights)


def test_step_bench_splits_a_step(images, capsys):
    """python -m training.bench step: per configuration, the phases of a step and each network alone,
    for stage 1 and for LCMSR on it; the critic's update is timed where the recipe has a PatchGAN."""
    from training import recipe
    from training.bench import step

    assert step.main(["--data", str(images / "train"), "--preset", "tiny", "--batch", "2", "--crop", "32", "--steps", "2",
                      "--rounds", "2", "--precisions", "float32", "--channels-last", "no"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("### lcmsr:")
    for part in (first, second):
        assert "| phase | float32 |" in part
        for phase in ("backward", "data: crops", "optimizer: AdamW", "total", "samples / s", "median step (ms)"):
            assert f"| {phase} |" in part, phase
    assert "| forward: decoder (in loss) |" in first and "| decoder | " in first and "| encoder | " in first
    assert "| forward: decoder (frozen) (in loss) |" in second and "| denoiser | " in second
    critic = "| critic update (in loss) |"
    assert (critic in first) == (recipe.STAGE1["options"]["gan_weight"] > 0)
    assert (critic in second) == (recipe.STAGE2["options"]["gan_weight"] > 0)


# `make train`'s stage 1 and stage 2, every option as parsed (data and folders left out): the Makefile's
# STAGE1_ARGS and STAGE2_ARGS over the CLI's defaults from before the recipe moved into training.recipe,
# with stage 1 as the recipe has run it since the third 2026-12-05 bundle (lr 1e-3, half of the samples
# at a zero latent, no PatchGAN), for 16000 steps at lr 5e-4 since the 2026-12-06 bundle
MAKE_TRAIN = {
    "stage1": {"steps": 16000, "schedule_steps": None, "batch": 8, "lr": 5e-4, "warmup": 100, "resume": True,
               "device": "cpu", "ckpt_every": 250, "val_every": 250, "crop": 96, "workers": 0, "seed": 0,
               "scales": (1.0, 8.0), "ema_decay": 0.999, "val_images": 16, "val_crop": 128, "no_progress": False,
               "preset": "default", "precision": "auto", "bands": 3, "kl_weight": 1e-4, "latent_noise": 0.1,
               "latent": 16, "gan_weight": 0.0, "gan_start": 600, "fft_weight": 0.05, "latent_dropout": 0.5,
               "detail_flat": True, "synth": 16, "guard": 10.0},
    "stage2": {"steps": 1500, "schedule_steps": None, "batch": 8, "lr": 3e-4, "warmup": 100, "resume": True,
               "device": "cpu", "ckpt_every": 250, "val_every": 250, "crop": 96, "workers": 0, "seed": 0,
               "scales": (1.0, 8.0), "ema_decay": 0.999, "val_images": 16, "val_crop": 128, "no_progress": False,
               "preset": "default", "precision": "auto", "cond_weight": 0.01, "cond_pixel_weight": 1.0,
               "gan_weight": 0.5, "lr_weight": 5.0, "features": 16, "spread": True, "energy_weight": 10.0, "guard": 0.0},
}


def make_train_commands() -> list[tuple[str, dict]]:
    """Each training command that `make train` runs, in order, with its options parsed by the training CLI."""
    import shlex
    import subprocess

    from training.cli import parser

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["make", "-n", "-o", "venv", "train"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        found = re.search(r"-m training (\S+)(.*)", line)
        if found:
            commands.append((found.group(1), vars(parser().parse_args([found.group(1), *shlex.split(found.group(2))]))))
    return commands


def make_train_stages() -> dict:
    """The options of each training stage that `make train` runs."""
    return {name: args for name, args in make_train_commands()
            if name in ("stage1", "e2diffsr", "lcmsr", "add-e2diffsr", "add")}


def test_make_train_measures_the_sampled_latents_edge_before_the_export():
    """The bundle's card gets its measured edge (training.reach) on the val images before the ONNX
    graphs are exported from it."""
    commands = make_train_commands()
    assert [name for name, _ in commands][-3:] == ["bundle", "reach", "export-onnx"]
    stages = dict(commands)
    assert stages["reach"]["rasters"] == [stages["stage1"]["val"][0]] and stages["reach"]["model"] is None


def test_make_train_runs_the_recipe_table_that_trained_the_bundle():
    """training.recipe is the one table of hyperparameters: `make train` passes only the data, the run
    folders and stage 1's --init, so each stage runs the CLI's defaults, which are the table's; that is
    exactly the recipe the Makefile ran before (MAKE_TRAIN), and the one the bundled card records
    (its steps, and its stage-2 options). The fine-tune and the step bench read the same table."""
    from engine.modelfile import read_card, resolve
    from training import finetune, recipe
    from training.bench import step

    stages = make_train_stages()
    assert set(stages) == {"stage1", "e2diffsr", "lcmsr", "add", "add-e2diffsr"}
    card = read_card(resolve("latentsr-rgb")).to_json()
    tables = {"stage1": recipe.STAGE1, "e2diffsr": recipe.STAGE2, "lcmsr": recipe.STAGE2, "add": recipe.ADD,
              "add-e2diffsr": recipe.ADD_E2DIFFSR}
    for name, args in stages.items():
        table = tables[name]
        if name in ("stage1", "e2diffsr", "lcmsr"):  # the stages the Makefile ran before the last ones
            made = MAKE_TRAIN["stage1" if name == "stage1" else "stage2"]
            assert {k: v for k, v in args.items() if k in made} == made, name
        assert {k: args[k] for k in table["options"] if k != "train_decoder"} \
            == {k: v for k, v in table["options"].items() if k != "train_decoder"}
        assert (args["steps"], args["lr"], args["warmup"], args["guard"]) \
            == (table["steps"], table["lr"], table.get("warmup", recipe.RUN["warmup"]), table.get("guard", 0.0))
        assert {k: args[k] for k in ("batch", "crop", "ema_decay", "val_images", "val_crop", "ckpt_every",
                                     "val_every", "seed")} == {k: v for k, v in recipe.RUN.items() if k not in ("scales", "warmup")}
        assert tuple(args["scales"]) == recipe.RUN["scales"]
        assert args["steps"] == card["training"][name]["step"]
        assert list(args["scales"]) == card["training"][name]["scales"] and args["batch"] == card["training"][name]["batch"]
        recorded = dict(card["training"][name]["options"])
        if name in ("stage1", "add", "add-e2diffsr"):  # the run it started from (stage 1: the bundle before it)
            assert recorded.pop("init")
        if name == "add-e2diffsr":  # the add run it was trained through
            assert recorded.pop("decoder") and re.fullmatch("[0-9a-f]{64}", recorded.pop("decoder_sha256"))
        assert recorded == table["options"], name
    assert Path(stages["stage1"]["init"]).resolve() == resolve("latentsr-rgb").resolve()
    assert stages["e2diffsr"]["stage1"] == stages["lcmsr"]["stage1"] == stages["add"]["stage1"] == stages["stage1"]["out"]
    assert stages["add"]["init"] == stages["lcmsr"]["out"]
    assert stages["add-e2diffsr"]["init"] == stages["e2diffsr"]["out"] and stages["add-e2diffsr"]["decoder"] == stages["add"]["out"]
    # the fine-tune: its own steps and lr, stage 1 with latent dropout and without the PatchGAN
    assert finetune.Finetune(rasters=[], out="").lr == recipe.FINETUNE["lr"] == 2e-4
    assert recipe.FINETUNE["stage1_options"] == dict(recipe.STAGE1_BASE, latent_dropout=0.25)
    assert step.STAGE1_OPTIONS == dict(recipe.STAGE1["options"], gan_start=0)


@pytest.mark.parametrize("name", ["lcmsr", "e2diffsr"])
def test_validation_runs_the_engines_tile_routine(images, stage1, tmp_path, name):
    """A stage-2 run's validation SR is engine.latent.run_tile (it reports each network call) over the
    EMA networks and the frozen decoder, with the card entry the bundle will carry: the stage's sampler
    settings, its latent scale and its spread; its reference is the regression path (D = 0)."""
    from engine import latent
    from engine.latent import denoiser_model
    from engine.samplers import sample_ddim, sample_lcm
    from engine.schedulers import consistency, ddpm
    from training import e2diffsr, lcmsr

    cls, steps = {"lcmsr": (lcmsr.LCMSRStage, lcmsr.SAMPLE_STEPS), "e2diffsr": (e2diffsr.E2DiffSRStage, e2diffsr.SAMPLE_STEPS)}[name]
    settings = Settings(data=str(images / "train"), out=str(tmp_path / name), crop=32, batch=2, preset="tiny",
                        stage1=str(stage1), options={"features": 2, "spread": True})
    stage = cls(settings, torch.device("cpu"), None)
    stage.latent_scale = 1.7
    pair = next(stage.stats_pairs(1))
    fractions = []
    token = latent.CALL_DONE.set(fractions.append)
    try:
        with torch.no_grad():
            sr, ref = stage.predict(pair, stage.nets), stage.reference(pair, stage.nets)
    finally:
        latent.CALL_DONE.reset(token)
    assert fractions == [k / (steps + 2) for k in range(1, steps + 2)] + [1.0] + [1 / (steps + 2), 1.0]
    with torch.no_grad():
        cond = stage.condition(stage.nets, pair)
        gen = torch.Generator().manual_seed(0)
        start = torch.randn(stage.guess(cond).shape, generator=gen)
        model = denoiser_model(lambda inputs: stage.nets["denoiser"](*inputs))
        extra = {"cond": cond, "inv_scale": pair.inv_scale}
        if name == "lcmsr":
            sample = sample_lcm(model, start, consistency.schedule(steps), extra)
        else:
            schedule = ddpm.schedule(steps, ddpm.DEFAULT_BETAS, e2diffsr.ETA, e2diffsr.PREDICTION)
            sample = sample_ddim(model, start, schedule, extra)
        torch.testing.assert_close(sr, stage.decode(pair, stage.clean(cond, sample), stage.nets), rtol=0, atol=0)
        torch.testing.assert_close(ref, stage.decode(pair, stage.guess(cond), stage.nets), rtol=0, atol=0)


def test_stage1_channels_widens_the_start_decoder(images, stage1, tmp_path, capsys):
    """--channels gives the run's decoder a wider trunk, started from the narrower --init decoder
    (training.widen; tests/test_widen.py checks that it decodes as the start); a narrower one is refused
    in one line, before the run folder is made."""
    assert main(train_args("stage1", images, tmp_path / "wide", 1, "--init", str(stage1), "--channels", "16")) == 0
    card = json.loads((tmp_path / "wide" / "model.json").read_text())
    assert card["networks"]["decoder"]["config"]["channels"] == 16
    assert json.loads((stage1 / "model.json").read_text())["networks"]["decoder"]["config"]["channels"] == 8
    assert main(train_args("stage1", images, tmp_path / "narrow", 1, "--init", str(tmp_path / "wide"),
                           "--channels", "8")) == 2
    assert "trunk has 16 channels and this run's 8" in capsys.readouterr().err
    assert not (tmp_path / "narrow").exists()
