"""The decoder's output-resolution synthesis (``synth``, issue 25): without the key the decoder is the
one before; a decoder that gains it starts as it was; what it adds is not made of 8×8 cells; its
reach is in engine.reach (tests/test_seams.py checks the bound), so tiles stay exact; it exports to
ONNX; stage 1 trains it and resumes."""
import numpy as np
import pytest
import torch

from engine import modelfile, reach
from engine.card import parse
from engine.grid import Grid
from engine.methods import MethodOptions, build_method, from_bundle
from engine.models import build, preset
from engine.models.sampling import LATENT_FACTOR, Plan
from training import export
from training.bundle import random_bundle, write
from training.cli import main

from tests.test_models import lr
from tests.test_training import images, train_args  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ("out_y_idx", "out_y_w", "out_x_idx", "out_x_w", "lat_y_idx", "lat_y_w", "lat_x_idx", "lat_x_w")


def live(dec: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``dec`` with its synthesis's last conv drawn (a fresh one starts at zero and adds nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dec.synth[-1].parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return dec


def run(dec, x, z, scale, a):
    with torch.no_grad():
        return dec(x, z, torch.full((1, 1), 1 / scale), *(a[k] for k in NAMES))


def test_without_the_key_the_decoder_is_the_one_before_and_gaining_it_starts_as_it_was():
    torch.manual_seed(0)
    config = preset("tiny", "decoder")
    plain = build("decoder", config)
    assert "synth" not in plain.config and build("decoder", dict(config, synth=0)).config == plain.config
    grown = build("decoder", dict(config, synth=4))
    assert grown.config["synth"] == 4
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("synth") for k in missing)
    x = torch.from_numpy(lr(h=13, w=11, seed=1))[None]
    plan = Plan.build(13, 11, Grid.whole(13, 11, 3.0), 1)
    a = plan.tensors("cpu")
    z = torch.randn(1, 16, *plan.latent_shape)
    assert torch.equal(run(grown, x, z, 3.0, a), run(plain, x, z, 3.0, a))
    assert not torch.allclose(run(live(grown), x, z, 3.0, a), run(plain, x, z, 3.0, a))


def test_what_the_synthesis_adds_crosses_the_cells():
    """The linear detail path fills each 8×8 cell from its own latent (plus its 3×3 neighbours); the
    synthesis's 3×3 convolutions over the output pixels mix across the cells' edges: a latent changed
    in one cell changes output pixels of the cells beside it, outside the cell's 8×8 block."""
    torch.manual_seed(1)
    dec = live(build("decoder", dict(preset("tiny", "decoder"), synth=4)))
    x = torch.from_numpy(lr(h=16, w=16, seed=2))[None]
    plan = Plan.build(16, 16, Grid.whole(16, 16, 4.0), 1)
    a = plan.tensors("cpu")
    z = torch.randn(1, 16, *plan.latent_shape)
    bumped = z.clone()
    bumped[:, :, 4, 4] += 1.0
    changed = (run(dec, x, bumped, 4.0, a) - run(dec, x, z, 4.0, a)).abs().amax(dim=(0, 1))
    r0, c0 = np.nonzero(plan.rows.cells == 4)[0][0], np.nonzero(plan.cols.cells == 4)[0][0]
    ring = torch.zeros_like(changed, dtype=torch.bool)  # the output pixels 1-2 beyond the cell's block
    ring[r0 - 2:r0 + LATENT_FACTOR + 2, c0 - 2:c0 + LATENT_FACTOR + 2] = True
    ring[r0:r0 + LATENT_FACTOR, c0:c0 + LATENT_FACTOR] = False
    assert (changed[ring] > 0).all()


def tile_and_whole(dec: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder on a tile (its LR and latent cut from the whole image's, on the global grid) and on
    the whole image, at ×2.5: the tile's output, the whole output's rows the tile makes, and which of
    them lie decoder_reach LR pixels and the guide's GUIDE_CELLS cells inside the tile (the halo of
    engine.reach for a sampled latent, less its measured edge)."""
    scale, h, w, in_y0, tile_h = 2.5, 64, 24, 6, 52
    gen = np.random.default_rng(1)
    image = torch.from_numpy(gen.random((1, 3, h, w), dtype=np.float32))
    field = torch.from_numpy(gen.standard_normal((1, 16, 40, 40), dtype=np.float32))
    whole = Grid.whole(h, w, scale)
    rows = slice(int(np.searchsorted(whole.ys, in_y0)), int(np.searchsorted(whole.ys, in_y0 + tile_h)))
    tile = Grid(whole.ys[rows] - in_y0, whole.xs, scale, out_y0=rows.start, in_y0=in_y0)
    outs = []
    for grid, lr_rows, n in ((whole, slice(None), h), (tile, slice(in_y0, in_y0 + tile_h), tile_h)):
        plan = Plan.build(n, w, grid, 1)
        z = field[:, :, plan.rows.cells][:, :, :, plan.cols.cells]
        outs.append(run(dec, image[:, :, lr_rows], z, scale, plan.tensors("cpu")))
    ys = whole.ys[rows]
    reach_lr = reach.decoder_reach(dec.config) + reach.GUIDE_CELLS * LATENT_FACTOR / scale
    inside = torch.from_numpy((ys - in_y0 >= reach_lr) & (in_y0 + tile_h - ys >= reach_lr))
    return outs[1], outs[0][:, :, rows], inside


def test_a_tile_of_the_decoder_with_the_synthesis_gives_the_whole_images_pixels():
    """The decoder with a live synthesis on a tile gives exactly the whole image's output pixels that lie
    far enough inside the tile (tile_and_whole), so tiles stay exact with the synthesis."""
    torch.manual_seed(2)
    dec = live(build("decoder", dict(preset("tiny", "decoder"), synth=4)))
    tiled, whole, inside = tile_and_whole(dec)
    assert inside.sum() > 10
    torch.testing.assert_close(tiled[:, :, inside], whole[:, :, inside], atol=1e-5, rtol=0)
    assert (tiled - whole).abs().amax() > 1e-3  # the edges do differ: the test sees them


def synth_bundle():
    """A tiny random bundle whose decoder has a live synthesis."""
    card, tensors = random_bundle("tiny", seed=3, name="tiny-synth")
    card = card.to_json()
    card["networks"]["decoder"]["config"]["synth"] = 4
    dec = live(build("decoder", card["networks"]["decoder"]["config"]), 5)
    tensors.update({f"decoder.{k}": v for k, v in dec.state_dict().items() if k.startswith("synth")})
    for spec in card["methods"].values():
        spec["latent_scale"] = 1.7
    return parse(card), tensors


@pytest.mark.parametrize("name,steps", [("regression", None), ("lcmsr", 1)])
def test_the_synthesis_exports_to_onnx_and_matches_torch(tmp_path, name, steps):
    card, tensors = synth_bundle()
    folder = tmp_path / "tiny-synth"
    write(folder, card, tensors)
    export.export(str(folder))  # it checks every graph against the torch networks, too
    assert modelfile.load(str(folder))[0].networks["decoder"].config["synth"] == 4
    torch_method = from_bundle(name, card, tensors, steps, "cpu")
    onnx_method = build_method(name, MethodOptions(steps, "onnx", "cpu", str(folder)))
    x = lr(c=3, h=21, w=26, seed=2)
    for scale in (2.5, 4.0):
        grid = Grid.whole(21, 26, scale)
        assert np.abs(onnx_method(x, grid, 7) - torch_method(x, grid, 7)).max() <= 1e-5


def test_stage1_synth_trains_the_synthesis_and_resumes(images, tmp_path):  # noqa: F811
    """stage 1 --synth F: the run's decoder has the synthesis (recorded in its card), it is trained (its
    last conv leaves zero), and the run resumes from its checkpoint with it."""
    out = tmp_path / "stage1"
    assert main(train_args("stage1", images, out, 2, "--synth", "4")) == 0
    assert main(train_args("stage1", images, out, 3, "--resume")) == 0
    card, tensors = modelfile.load(str(out))
    assert card.networks["decoder"].config["synth"] == 4 and card.training["step"] == 3
    assert tensors["decoder.synth.2.weight"].abs().max() > 0
