"""A decoder's LR trunk widened or deepened from a smaller start (training.widen, stage 1's --channels and --blocks)."""
from pathlib import Path

import pytest
import torch

from engine.models import build
from training import bands
from training.batch import make_pair
from training.bundle import random_bundle, write
from training.errors import TrainingError
from training.stage1 import Stage1
from training.trainer import Settings
from training.widen import trunk_channels


def decoder(channels, blocks=2, **extra):
    config = dict(bands=3, latent=4, channels=channels, blocks=blocks, up_channels=4, tail_channels=6, emb_dim=16,
                  detail=True, synth=4, gate=True, **extra)
    return build("decoder", config).double()


@pytest.fixture
def float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # make_pair's tables too
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def narrow():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        old = decoder(8)
        for p in old.parameters():  # no zero-initialised layer: every path carries signal
            torch.nn.init.normal_(p, std=0.3)
    return old.eval()


def assert_decodes_alike(a, b, scale, latent=None):
    """``a`` and ``b`` decode the same LR and latent alike, to the rounding of float64: a random latent
    of 4 channels, or with ``latent`` a zero latent of that many."""
    pair = make_pair(torch.rand(2, 3, 32, 32), scale, 1)
    z = torch.randn(2, 4, *pair.latent_shape(4)[2:]) if latent is None else torch.zeros(pair.latent_shape(latent))
    with torch.no_grad():
        torch.testing.assert_close(a(*pair.decoder_inputs(z)), b(*pair.decoder_inputs(z)), rtol=1e-10, atol=1e-10)


def stage1_decoder(folder, **options):
    """The decoder stage 1 starts from the bundle ``folder`` with ``options`` (its detail path's constant
    at zero: stage 1 sets it by PCA)."""
    settings = Settings(data=str(Path(__file__).parent / "data"), out="", preset="tiny", crop=64, batch=2,
                        options={"init": str(folder), **options})
    stage = Stage1(settings, torch.device("cpu"), None)
    stage.setup()
    dec = stage.nets["decoder"].eval()
    with torch.no_grad():
        dec.detail.bias.zero_()
    return dec


@pytest.mark.parametrize("scale", [1.0, 2.5, 4.0])
def test_widened_trunk_decodes_as_the_narrow_one(float64, narrow, scale):
    wide = decoder(20).eval()
    assert bands.load_adapted(wide, "decoder", narrow.state_dict(), 3) == []
    assert trunk_channels(wide.state_dict()) == 20
    assert_decodes_alike(wide, narrow, scale)


def test_new_channels_carry_signal_and_learn(float64, narrow):
    """The new channels' rows start random (scaled down), so the zero columns that read them get a gradient."""
    wide = decoder(20)
    bands.load_adapted(wide, "decoder", narrow.state_dict(), 3)
    pair = make_pair(torch.rand(2, 3, 32, 32), 3.0, 1)
    z = torch.randn(2, 4, *pair.latent_shape(4)[2:])
    wide(*pair.decoder_inputs(z)).square().mean().backward()
    for name in ("blocks.0.conv1.weight", "blocks.1.conv2.weight", "body_out.weight", "levels.0.weight"):
        weight = dict(wide.named_parameters())[name]
        assert not weight.detach()[:, 8:].any() if name.startswith("levels") else not weight.detach()[:8, 8:].any()
        grad = weight.grad[:, 8:] if name.startswith("levels") else weight.grad[:8, 8:]
        assert grad.abs().max() > 0, name
    # the old scale and shift rows of a block's guidance sit at the start of each half
    guide = dict(wide.named_parameters())["blocks.0.guide.weight"].detach()
    old_guide = narrow.state_dict()["blocks.0.guide.weight"]
    torch.testing.assert_close(guide[20:28, :8], old_guide[8:16])


def test_a_trunk_does_not_narrow(narrow):
    with pytest.raises(TrainingError, match="trunk has 8 channels and this run's 6"):
        bands.load_adapted(decoder(6), "decoder", narrow.state_dict(), 3)


def test_another_latent_keeps_its_start(narrow):
    """Weights whose other axes differ (another latent size) are not the widening's: they keep the
    fresh start, as load_adapted does for a decoder of the same width."""
    wide = build("decoder", dict(bands=3, latent=6, channels=20, blocks=2, up_channels=4, tail_channels=6, emb_dim=16,
                                 detail=True, synth=4, gate=True)).double()
    fresh = {k: v.clone() for k, v in wide.state_dict().items()}
    left = bands.load_adapted(wide, "decoder", narrow.state_dict(), 3)
    assert {"guide.0.weight", "detail.weight", "synth_cells.weight"} <= set(left)
    torch.testing.assert_close(wide.state_dict()["guide.0.weight"], fresh["guide.0.weight"])
    torch.testing.assert_close(wide.state_dict()["head.weight"][:8], narrow.state_dict()["head.weight"])


@pytest.mark.parametrize("channels", [16, 12])
def test_stage1_widens_a_bundle_without_its_encoder(float64, tmp_path, channels):
    """A start bundle without a stage-1 encoder gives stage 1 its decoder with the latent guidance folded
    into its zero-latent constant (Stage1.start_decoder_from); with --channels the trunk is widened too,
    to a width that need not be a multiple of the start's, and decodes a zero latent as the same start
    at its own width does (the detail path's constant aside: stage 1 sets it by PCA)."""
    folder = write(tmp_path / "start", *random_bundle("tiny", name="start"))
    narrow, wide = stage1_decoder(folder, channels=8), stage1_decoder(folder, channels=channels)
    assert wide.config["channels"] == channels and narrow.config["channels"] == 8
    assert_decodes_alike(wide, narrow, 2.5, latent=wide.config["latent"])


@pytest.mark.parametrize("scale", [1.0, 2.5, 4.0])
def test_deepened_trunk_decodes_as_the_shallow_one(float64, narrow, scale):
    """New guided blocks after the start's pass their input through (their second conv at zero), also
    when the trunk is widened at the same time."""
    for deep in (decoder(8, blocks=5).eval(), decoder(12, blocks=3).eval()):
        assert bands.load_adapted(deep, "decoder", narrow.state_dict(), 3) == []
        assert_decodes_alike(deep, narrow, scale)


def test_new_blocks_learn(float64, narrow):
    """A new block's second conv gets a gradient from the first step; the old blocks keep theirs."""
    deep = decoder(8, blocks=4)
    bands.load_adapted(deep, "decoder", narrow.state_dict(), 3)
    torch.testing.assert_close(deep.blocks[1].conv2.weight.detach(), narrow.blocks[1].conv2.weight)
    assert not deep.blocks[2].conv2.weight.detach().any() and not deep.blocks[3].conv2.bias.detach().any()
    pair = make_pair(torch.rand(2, 3, 32, 32), 3.0, 1)
    z = torch.randn(2, 4, *pair.latent_shape(4)[2:])
    deep(*pair.decoder_inputs(z)).square().mean().backward()
    for block in deep.blocks[2:]:
        assert block.conv2.weight.grad.abs().max() > 0


def test_a_trunk_does_not_get_shallower(narrow):
    with pytest.raises(TrainingError, match="trunk has 2 guided blocks and this run's 1"):
        bands.load_adapted(decoder(8, blocks=1), "decoder", narrow.state_dict(), 3)


def test_stage1_deepens_a_bundle(float64, tmp_path):
    """Stage 1's --blocks from a bundle: the run's decoder has the blocks asked for and decodes a zero
    latent as the start's depth does."""
    folder = write(tmp_path / "start", *random_bundle("tiny", name="start"))
    shallow = stage1_decoder(folder)
    deep = stage1_decoder(folder, blocks=len(shallow.blocks) + 3)
    assert deep.config["blocks"] == shallow.config["blocks"] + 3 == len(deep.blocks)
    assert_decodes_alike(deep, shallow, 3.3, latent=deep.config["latent"])


@pytest.mark.parametrize("option, value, message", [("--blocks", "0", "--blocks must be at least 1, got 0"),
                                                     ("--channels", "-3", "--channels must be at least 1, got -3"),
                                                     ("--synth", "-1", "--synth must be 0 (none) or more, got -1"),
                                                     ("--latent", "0", "--latent must be at least 1, got 0"),
                                                     ("--steps", "0", "--steps must be at least 1, got 0"),
                                                     ("--blocks", "x", "--blocks: invalid int value: 'x'")])
def test_a_size_that_is_no_size_is_refused_in_one_line(tmp_path, capsys, option, value, message):
    """Before anything is read or written (--channels -3 and --latent 0 were tracebacks from torch)."""
    from training.cli import main

    assert main(["stage1", "--data", str(tmp_path), "--out", str(tmp_path / "run"), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
