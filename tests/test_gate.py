"""The decoder's gate (``gate``, issue 25): a gain per output pixel and band on what the latent adds at
the output resolution, read from the LR branch's features there. Without the key the decoder is the
one before; a decoder that gains it starts as it was; the gain is positive, varies within a latent
cell and multiplies the detail path and the synthesis only; tiles stay exact (engine.reach); it exports
to ONNX; `add --gate` trains it and resumes."""
import json

import numpy as np
import pytest
import torch

from engine import modelfile
from engine.card import parse
from engine.grid import Grid
from engine.methods import MethodOptions, build_method, from_bundle
from engine.models import PRESETS, build, preset
from engine.models.sampling import LATENT_FACTOR, Plan
from training import export
from training.bundle import random_bundle, write
from training.cli import main

from tests.test_models import lr
from tests.test_synth import NAMES, live, run, tile_and_whole
from tests.test_training import images, train_args  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def gated(seed: int = 0) -> torch.nn.Module:
    """A tiny decoder with a live synthesis and a live gate (a fresh gate is a gain of 1)."""
    torch.manual_seed(seed)
    dec = live(build("decoder", dict(preset("tiny", "decoder"), synth=4, gate=True)), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in dec.gate.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return dec


def inputs(h=13, w=11, scale=3.0, seed=1):
    x = torch.from_numpy(lr(h=h, w=w, seed=seed))[None]
    plan = Plan.build(h, w, Grid.whole(h, w, scale), 1)
    return x, plan.tensors("cpu"), torch.randn(1, 16, *plan.latent_shape, generator=torch.Generator().manual_seed(seed))


def test_gaining_the_gate_starts_as_it_was():
    config = dict(preset("tiny", "decoder"), synth=4)
    plain = live(build("decoder", config))
    assert "gate" not in plain.config and build("decoder", dict(config, gate=False)).config == plain.config
    grown = build("decoder", dict(config, gate=True))
    assert grown.config["gate"] is True
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["gate.bias", "gate.weight"]
    x, a, z = inputs()
    assert torch.equal(run(grown, x, z, 3.0, a), run(plain, x, z, 3.0, a))


def test_a_gate_needs_something_to_scale():
    with pytest.raises(ValueError, match="gate needs"):
        build("decoder", dict(preset("tiny", "decoder"), detail=False, gate=True))
    assert build("decoder", dict(preset("tiny", "decoder"), gate=True)).config["gate"] is True  # the detail path alone


def test_the_gate_scales_the_latents_paths_by_a_positive_gain_and_leaves_the_lr_branch():
    """The parts of a gated decoder: the LR branch's ("tail") is the ungated decoder's, and the detail
    path's and the synthesis's are the ungated ones times one positive gain per output pixel and band,
    which varies over the output pixels (it is not a constant rescaling)."""
    dec = gated()
    plain = build("decoder", {k: v for k, v in dec.config.items() if k != "gate"})
    plain.load_state_dict(dec.state_dict(), strict=False)
    x, a, z = inputs(h=16, w=16, scale=4.0)
    args = (x, z, torch.full((1, 1), 0.25), *(a[k] for k in NAMES))
    with torch.no_grad():
        parts, _ = dec.parts(*args)
        base, _ = plain.parts(*args)
    torch.testing.assert_close(parts["tail"], base["tail"], rtol=0, atol=0)
    gain = parts["detail"] / base["detail"]
    torch.testing.assert_close(parts["synth"], base["synth"] * gain, rtol=1e-4, atol=1e-6)
    assert (gain > 0).all() and gain.std() > 0.05
    # within a latent cell the gain is not one 8×8 pattern repeated: it follows the LR's features
    cells = gain[0, :LATENT_FACTOR * 2, :LATENT_FACTOR * 2, 0].reshape(2, LATENT_FACTOR, 2, LATENT_FACTOR)
    assert not torch.allclose(cells[0, :, 0], cells[1, :, 1], atol=1e-3)


@pytest.mark.parametrize("synth", [4, 0])
def test_a_tile_of_a_gated_decoder_gives_the_whole_images_pixels(synth):
    """As for the synthesis (tests/test_synth.py): a tile cut from the whole image on the global grid
    gives the whole image's output pixels that lie decoder_reach LR pixels and the guide's cells inside
    it, with the synthesis and without it (the gate's own output pixel of reach)."""
    from engine import reach

    dec = gated(seed=2)
    if not synth:
        bare = build("decoder", dict(preset("tiny", "decoder"), gate=True))
        bare.load_state_dict(dec.state_dict(), strict=False)
        dec = bare
    assert reach.output_margin(dec.config) == (reach.SYNTH_REACH if synth else reach.GATE_REACH)
    tiled, whole, inside = tile_and_whole(dec)
    assert inside.sum() > 10
    torch.testing.assert_close(tiled[:, :, inside], whole[:, :, inside], atol=1e-5, rtol=0)
    assert (tiled - whole).abs().amax() > 1e-3  # the edges do differ: the test sees them


def test_the_gate_exports_to_onnx_and_matches_torch(tmp_path):
    card, tensors = random_bundle("tiny", seed=3, name="tiny-gate")
    card = card.to_json()
    card["networks"]["decoder"]["config"].update(synth=4, gate=True)
    dec = gated(seed=5)
    tensors.update({f"decoder.{k}": v for k, v in dec.state_dict().items() if k.startswith(("synth", "gate"))})
    for spec in card["methods"].values():
        spec["latent_scale"] = 1.7
    card = parse(card)
    folder = tmp_path / "tiny-gate"
    write(folder, card, tensors)
    export.export(str(folder))  # it checks every graph against the torch networks, too
    onnx_method = build_method("lcmsr", MethodOptions(1, "onnx", "cpu", str(folder), detail=1.0))
    torch_method = from_bundle("lcmsr", card, tensors, 1, "cpu", detail=1.0)
    x = lr(c=3, h=21, w=26, seed=2)
    for scale in (2.5, 4.0):
        grid = Grid.whole(21, 26, scale)
        assert np.abs(onnx_method(x, grid, 7) - torch_method(x, grid, 7)).max() <= 1e-5


def test_add_gate_trains_the_gate_and_resumes(images, tmp_path):  # noqa: F811
    """add --gate: the add run's decoder gains the gate (recorded in its card's config and options),
    starts from stage 1's decoder, trains the gate (it leaves zero), and resumes from its checkpoint."""
    stage1, lcmsr, add = tmp_path / "stage1", tmp_path / "lcmsr", tmp_path / "add"
    assert main(train_args("stage1", images, stage1, 2, "--synth", "4")) == 0
    assert main(train_args("lcmsr", images, lcmsr, 2, "--stage1", str(stage1))) == 0
    common = ("--stage1", str(stage1), "--init", str(lcmsr), "--gate")
    assert main(train_args("add", images, add, 2, *common)) == 0
    assert main(train_args("add", images, add, 3, *common, "--resume")) == 0
    card, tensors = modelfile.load(str(add))
    assert card.networks["decoder"].config["gate"] is True and card.training["step"] == 3
    assert json.loads((add / "model.json").read_text())["training"]["options"]["gate"] is True
    assert tensors["decoder.gate.weight"].abs().max() > 0


def test_add_gate_on_a_decoder_with_nothing_to_scale_is_one_line(images, tmp_path, capsys, monkeypatch):  # noqa: F811
    """A stage-1 decoder without the detail path or the synthesis (as older bundles'): one line, no run."""
    monkeypatch.setitem(PRESETS["tiny"], "decoder", dict(PRESETS["tiny"]["decoder"], detail=False))
    stage1, lcmsr = tmp_path / "stage1", tmp_path / "lcmsr"
    assert main(train_args("stage1", images, stage1, 2)) == 0
    assert main(train_args("lcmsr", images, lcmsr, 2, "--stage1", str(stage1))) == 0
    assert main(train_args("add", images, tmp_path / "add", 2, "--stage1", str(stage1), "--init", str(lcmsr),
                           "--gate")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "--gate needs" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "add" / "model.json").exists()


def test_a_gated_decoder_keeps_its_preset_for_the_fine_tunes_encoder():
    """training.finetune picks the encoder's preset by the decoder's sizes; the gate is not a size."""
    from training.finetune import encoder_preset

    assert encoder_preset(dict(preset("tiny", "decoder"), synth=4, gate=True)) == "tiny"
    assert encoder_preset(dict(preset("small", "decoder"), gate=True)) == "small"
