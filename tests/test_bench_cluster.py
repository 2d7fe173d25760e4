"""The scaling model of python -m training.bench cluster (training/bench/cluster.py)."""
from __future__ import annotations

import pytest

from training.bench.cluster import Model


def test_scaling_model_counts_waves_context_rows_and_the_floor():
    model = Model(start=10.0, per_mp=2.0, per_band=1.0, pack=0.2)
    p = model.parts(100_000, 100)  # 100 GP at ×4: LR 79,057², 353 tile rows, in 89 bands of 4 on 100 workers
    assert (p["rows"], p["k"], p["n"], p["waves"]) == (353, 4, 89, 1)
    assert p["compute"] == pytest.approx(5 * 2.0 * 100_000 / 353)  # a band's 4 rows and the row above
    assert p["client"] == 0.0  # into a .vrt nothing on the client grows with the output
    tif = model.parts(100_000, 100, tif=True)
    assert tif["client"] == pytest.approx(0.2 * 100_000) and tif["compute"] == pytest.approx(5 * 1.8 * 100_000 / 353)
    one = model.parts(100_000, 1)  # fewer workers than bands: the bands run in waves
    assert one["waves"] == one["n"] == 6
    assert model.seconds(100_000, 1) == pytest.approx(10.0 + 6 * ((one["k"] + 1) * 2.0 * 100_000 / 353 + 1.0))
    # a band is whole tile rows: one row and its context row per worker is the least, whatever the workers
    assert model.floor(100_000) == pytest.approx(10.0 + 2 * 2.0 * 100_000 / 353 + 1.0)
    assert model.seconds(100_000, 10_000) == pytest.approx(model.floor(100_000))
    assert model.workers_for(100_000, 900) is None and model.workers_for(1_000, 900) is not None
