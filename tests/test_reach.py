"""training.reach: each bundle measures how far its sampled latent carries a tile's edge, per method and
step count, and the engine's halo follows what its card records."""
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import modelfile, reach as engine_reach
from engine.methods import MethodOptions, build_method
from tests.conftest import DATA, write_raster
from training import reach
from training.bundle import random_bundle, write

VAL = Path(DATA) / "ucmerced" / "val"


@pytest.mark.parametrize("lo", [0, 3, 7])
def test_the_search_finds_the_first_edge_that_passes(lo):
    for first in range(lo, 40):
        asked = []

        def passes(edge):
            asked.append(edge)
            return edge >= first

        assert reach.smallest_edge(passes, lo, 64) == first
        assert len(asked) <= 2 * math.ceil(math.log2(first + 2)) + 1, (first, asked)
    assert reach.smallest_edge(lambda e: e >= 70, lo, 64) is None
    assert reach.smallest_edge(lambda e: True, lo, 64) == lo  # the search's start passes: it is the answer


def test_the_measured_edge_goes_into_the_card_and_the_halo(tmp_path, monkeypatch):
    """On a tiny random bundle (one scale and seed, to stay fast): every sampling method gets one edge
    per step count, each searched from 0, the card records how they were measured, and the
    engine's halo at each step count is the one its edge gives."""
    monkeypatch.setattr(reach, "SCALES", (4.0,))
    monkeypatch.setattr(reach, "SEEDS", (0,))
    card, tensors = random_bundle("tiny", seed=2)
    folder = write(tmp_path / "tiny", card, tensors)
    record = reach.measure(str(folder), [str(VAL / "forest")], count=1)
    card = modelfile.read_card(folder)
    assert card.training["sample_edge"] == record and record["rasters"] == [str((VAL / "forest").resolve())]
    assert record["tolerance_levels"] == reach.TOLERANCE and record["scales"] == [4.0]
    decoder = card.networks[card.decoder].config
    for name in ("e2diffsr", "lcmsr"):
        spec = card.methods[name]
        assert len(spec.sample_edge) == spec.max_steps == 4
        assert list(spec.sample_edge) == record["methods"][name]["edge"]
        assert all(d <= reach.TOLERANCE for d in record["methods"][name]["largest_difference"])
        for steps in (1, 4):
            method = build_method(name, MethodOptions(model=str(folder), backend="torch", steps=steps, detail=1.0))
            assert method.halo(2.0) == engine_reach.method_halo(decoder, 2.0, spec.edge(steps))
    assert card.methods["regression"].sample_edge is None


def test_a_raster_too_small_to_tile_is_refused(tmp_path):
    small = str(tmp_path / "small.tif")
    write_raster(small, np.random.default_rng(0).integers(0, 255, (3, 40, 40)).astype(np.uint8))
    with pytest.raises(reach.TrainingError, match="more than 64 pixels on each side"):
        reach.windows([small], None, 1, tmp_path)


def test_the_bundled_edge_is_the_smallest_that_keeps_tiles_exact(tmp_path):
    """The bundled card's edge of E²DiffSR at its most steps, rerun on the case that needed it: one
    cell less and the tiled output leaves the tolerance, with the card's edge it is within it."""
    card = modelfile.read_card(modelfile.resolve(None))
    record = card.training["sample_edge"]
    spec = card.methods["e2diffsr"]
    below = [b for b in record["methods"]["e2diffsr"]["one_cell_less"] if b["steps"] == spec.max_steps]
    if not below:
        pytest.skip("the edge at the most steps was the search's start: no case needed one more cell")
    case_of = below[0]
    (name, window, span), = reach.windows([str(VAL / case_of["raster"])], None, 1, tmp_path)
    case = reach.Case(name, window, case_of["scale"], case_of["seed"], span / 255)
    copy = tmp_path / "model"
    shutil.copytree(modelfile.resolve(None), copy)
    edges = {m: list(card.methods[m].sample_edge) for m in ("e2diffsr", "lcmsr")}
    run = reach.Runner(copy, card, edges, "e2diffsr", spec.max_steps, [case], tmp_path)
    assert not run.passes(case_of["edge"])
    assert run.worst[case_of["edge"]] == pytest.approx(case_of["difference"], abs=0.02)
    assert run.passes(spec.edge(spec.max_steps))
