"""The scaling model of python -m training.bench cluster (training/bench/cluster.py)."""
from __future__ import annotations

import pytest

from training.bench.cluster import Model, tiles_run


def test_scaling_model_counts_waves_blocks_with_their_context_and_cores():
    model = Model(start=10.0, per_mp=2.0, per_block=1.0, pack=0.2)
    p = model.parts(100_000, 100)  # 100 GP at ×4: LR 79,057², 353 × 353 tiles, on 100 one-core workers
    assert (p["rows"], p["n"], p["waves"]) == (353, 100, 1) and p["k"] < 353 and p["m"] < 353
    assert p["tiles"] == (p["k"] + 1) * (p["m"] + 1)  # a block's cells, the row above and the column to its left
    assert p["compute"] == pytest.approx(p["tiles"] * 2.0 * 100_000 / 353 ** 2)
    assert p["compute"] < 5 * 2.0 * 100_000 / 353  # less than a band of 4 whole tile rows and its context row
    assert p["client"] == 0.0  # into a .vrt nothing on the client grows with the output
    tif = model.parts(100_000, 100, tif=True)
    assert tif["client"] == pytest.approx(0.2 * 100_000) and tif["compute"] == pytest.approx(p["tiles"] * 1.8 * 100_000 / 353 ** 2)
    # a worker of 4 cores is 4 one-core task slots: as 400 one-core workers
    assert model.seconds(100_000, 100, 4) == pytest.approx(model.seconds(100_000, 400))
    assert model.seconds(100_000, 100, 4) < model.seconds(100_000, 100, 2) < model.seconds(100_000, 100)
    one = model.parts(100_000, 1)  # more blocks than slots: the blocks run in waves
    assert one["waves"] == one["n"] > 1
    assert model.seconds(100_000, 1) == pytest.approx(10.0 + one["n"] * (one["tiles"] * 2.0 * 100_000 / 353 ** 2 + 1.0))
    # blocks split both axes: the floor is one cell per slot, with its context row and column (4 tiles)
    assert model.floor(100_000) == pytest.approx(10.0 + 4 * 2.0 * 100_000 / 353 ** 2 + 1.0)
    need = model.cores_for(100_000, 100, 900)
    assert need and model.seconds(100_000, 100, need) <= 900 < model.seconds(100_000, 100, need - 1)
    workers = model.workers_for(100_000, 900)
    assert model.seconds(100_000, workers) <= 900 < model.seconds(100_000, workers - 1)
    assert model.workers_for(100_000, 10.0) is None  # below the floor


def test_tiles_run_counts_each_blocks_context():
    assert tiles_run(4, 4, 4) == 16  # one block: no context
    assert tiles_run(4, 2, 4) == 5 * 4  # two blocks down: one context row
    assert tiles_run(4, 1, 1) == 7 * 7
