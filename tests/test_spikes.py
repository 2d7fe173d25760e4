import math

import pytest

from training.spikes import StepGuard, is_spike


def test_a_norm_far_over_the_median_is_a_spike():
    recent = [1.0, 2.0, 3.0, 100.0]  # the median, 2.5, is not pulled up by one large norm
    assert not is_spike(24.9, recent, factor=10, warmup=4)
    assert is_spike(25.1, recent, factor=10, warmup=4)


def test_the_guard_waits_for_its_warmup_but_never_admits_a_norm_that_is_not_finite():
    assert not is_spike(1e9, [1.0] * 3, factor=10, warmup=4)
    for bad in (math.nan, math.inf):
        assert is_spike(bad, [], factor=10, warmup=4)


def test_the_guard_keeps_only_admitted_norms_and_stops_after_its_patience():
    g = StepGuard(factor=10, window=3, warmup=2, patience=2)
    assert g.admit(1.0) and g.admit(2.0) and g.admit(3.0) and g.admit(4.0)
    assert g.recent == [2.0, 3.0, 4.0] and g.median == 3.0
    assert not g.admit(31.0) and not g.stuck and g.recent == [2.0, 3.0, 4.0]
    assert not g.admit(math.nan) and g.stuck
    assert g.admit(5.0) and not g.stuck and g.in_a_row == 0


def test_the_guards_state_round_trips():
    g = StepGuard(10, window=4)
    for v in (1.0, 2.0, 3.0):
        g.admit(v)
    g.in_a_row = 2
    h = StepGuard(10, window=4)
    h.load_state(g.state())
    assert h.recent == g.recent and h.in_a_row == 2
    fresh = StepGuard(10)
    fresh.load_state({})  # a checkpoint from before the guard
    assert fresh.recent == [] and fresh.in_a_row == 0


@pytest.mark.parametrize("window", [1, 5])
def test_the_window_bounds_what_the_median_sees(window):
    g = StepGuard(10, window=window, warmup=1)
    for v in range(1, 11):
        assert g.admit(float(v))
    assert len(g.recent) == window and g.recent[-1] == 10.0
