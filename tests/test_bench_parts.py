"""python -m training.bench parts (training/bench/parts.py) on a tiny random bundle with the synthesis: the
parts it measures add up to the decoder's output, and it reports each part's lattice figure."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from engine.grid import Grid
from engine.models.inputs import DecoderInputs
from engine.methods import from_bundle
from engine.models.sampling import Plan
from training.bench import parts
from training.bundle import write

from tests.test_synth import synth_bundle

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def val(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "val" / cls / f"{cls}1.png")
    return tmp_path / "val"


def test_the_parts_add_up_to_the_decoders_output():
    """The bicubic skip plus the LR branch's, the detail path's and the synthesis's outputs is the
    decoder's forward, so what the bench splits is the whole of what a sample adds."""
    card, tensors = synth_bundle()
    dec = from_bundle("lcmsr", card, tensors, 1, "cpu").nets.nets["decoder"]
    lr = torch.rand(1, 3, 12, 10)
    plan = Plan.build(12, 10, Grid.whole(12, 10, 4.0), 1)
    a = plan.tensors("cpu")
    z = torch.randn(1, 16, *plan.latent_shape)
    names = ("out_y_idx", "out_y_w", "out_x_idx", "out_x_w", "lat_y_idx", "lat_y_w", "lat_x_idx", "lat_x_w")
    inputs = DecoderInputs(lr, z, torch.full((1, 1), 0.25), *(a[k] for k in names))
    with torch.inference_mode():
        whole = dec(*inputs)[0]
        split, _ = parts.part_outputs(dec, inputs)
    no_parts = dec.__class__(**{**dec.config, "synth": 0})
    no_parts.load_state_dict(dec.state_dict(), strict=False)
    assert set(split) == {"LR branch, pyramid and tail", "detail path", "synthesis"}
    assert all(v.abs().max() > 1e-3 for v in split.values())
    skip = whole - sum(split.values())
    # what is left is the bicubic skip: the decoder's output with its other parts set to zero
    for p in list(no_parts.tail[-1].parameters()) + list(no_parts.detail.parameters()):
        torch.nn.init.zeros_(p)
    with torch.inference_mode():
        torch.testing.assert_close(skip, no_parts(*inputs)[0], atol=1e-5, rtol=0)


def test_parts_reports_each_parts_lattice(val, tmp_path, caplog):
    card, tensors = synth_bundle()
    tensors["decoder.detail.weight"] = 0.05 * torch.randn(tensors["decoder.detail.weight"].shape,
                                                          generator=torch.Generator().manual_seed(4))  # it reads the latent
    folder = write(tmp_path / "tiny-synth", card, tensors)
    with caplog.at_level(logging.INFO, logger="training.bench.parts"):
        assert parts.main(["--model", str(folder), "--val", str(val), "--images", "2"]) == 0
    text = caplog.text
    for row in ("LR branch, pyramid and tail", "detail path", "synthesis", "whole decoder",
                "synthesis, its latent input only", "synthesis, the pyramid's input only", "HR − D = 0 (HR's own)"):
        line = next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
        lattice, rms = (float(v) for v in line.strip("|").split("|")[1:])
        assert np.isfinite(lattice) and rms > 0
