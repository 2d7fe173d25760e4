"""The tile plan and its blend weights (pure math)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.grid import Grid, centres, output_size, resolution_axis, scale_axis, snap_window
from engine.tiling import Cells, axis_plan, ramp, required_margin, tile_plan, window_starts


def coverage(plan, n_out):
    total = np.zeros(n_out)
    for t in plan:
        total[t.out_start:t.out_stop] += t.weights
    return total


@settings(max_examples=300, deadline=None)
@given(n_in=st.integers(1, 700), scale=st.floats(1.01, 8.0), tile=st.integers(16, 300),
       overlap_frac=st.floats(0, 0.95), context=st.integers(0, 12), kind=st.sampled_from(["cosine", "linear"]))
def test_plan_partitions_every_output_pixel(n_in, scale, tile, overlap_frac, context, kind):
    overlap = min(int(tile * overlap_frac), tile - 1)
    n_out = output_size(n_in, scale)
    plan = axis_plan(n_in, n_out, tile, overlap, required_margin(context, overlap), kind)
    np.testing.assert_allclose(coverage(plan, n_out), 1.0, atol=1e-6)
    pos = centres(n_in, n_out, 0, n_out) + 0.5
    margin = required_margin(context, overlap)
    for k, t in enumerate(plan):
        assert 0 <= t.in_start < t.in_stop <= n_in and t.in_stop - t.in_start <= tile
        assert 0 <= t.out_start < t.out_stop <= n_out
        assert (t.weights >= 0).all() and t.weights[0] > 0 and t.weights[-1] > 0
        p = pos[t.out_start:t.out_stop]
        assert (p >= t.in_start).all() and (p <= t.in_stop).all()
        used = p[t.weights > 0]
        if t.in_start > 0:  # an interior edge: no weight within the margin
            assert (used - t.in_start >= margin - 1e-9).all()
        if t.in_stop < n_in:
            assert (t.in_stop - used >= margin - 1e-9).all()
    starts = [t.out_start for t in plan]
    assert starts == sorted(set(starts)) and starts[0] == 0


def test_window_starts():
    assert window_starts(100, 256, 32) == [0]
    assert window_starts(500, 256, 32) == [0, 224, 244]
    assert window_starts(448, 256, 32) == [0, 192]
    with pytest.raises(ValueError):
        window_starts(500, 32, 32)


def test_ramps_rise_from_zero_to_one_symmetrically():
    t = np.linspace(-0.5, 1.5, 101)
    for kind in ("cosine", "linear"):
        r = ramp(t, kind)
        assert r[0] == 0 and r[-1] == 1 and (np.diff(r) >= 0).all()
        np.testing.assert_allclose(r + ramp(1 - t, kind), 1.0, atol=1e-12)


def test_no_overlap_gives_hard_edges():
    plan = axis_plan(100, 250, 50, 0, 0)
    assert [(t.out_start, t.out_stop) for t in plan] == [(0, 125), (125, 250)]
    assert all((t.weights == 1).all() for t in plan)


def test_whole_grid_keeps_extent():
    g = Grid.whole(10, 7, 2.5)
    assert g.shape == (25, 18)
    # first and last output centres sit symmetrically inside the input extent [-0.5, n - 0.5]
    assert g.ys[0] + 0.5 == pytest.approx(10 - 0.5 - g.ys[-1])
    assert g.xs[0] + 0.5 == pytest.approx(7 - 0.5 - g.xs[-1])


@pytest.mark.parametrize("n,s,expected", [(256, 2.5, 640), (377, 3.7, 1395), (1, 1.3, 1), (3, 1.5, 5), (697, 4, 2788)])
def test_output_size_rounds(n, s, expected):
    assert output_size(n, s) == expected


@settings(max_examples=300, deadline=None)
@given(n_in=st.integers(1, 500), pixel=st.floats(0.3, 30.0), ratio=st.floats(1.01, 8.0))
def test_resolution_axis_is_exact_and_grows_less_than_a_pixel(n_in, pixel, ratio):
    target = pixel / ratio
    axis = resolution_axis(n_in, pixel, target)
    assert axis.step * pixel == pytest.approx(target, rel=1e-12)  # the output pixel is exactly the target
    assert n_in <= axis.span + 1e-6 < n_in + axis.step  # whole pixels, grown by less than one
    assert axis.shift == 0.0


@settings(max_examples=300, deadline=None)
@given(n_in=st.integers(2, 400), scale=st.floats(1.01, 8.0), a=st.floats(0, 1), b=st.floats(0, 1),
       by_target=st.booleans())
def test_snap_window_lies_on_the_whole_grid_and_covers_the_window(n_in, scale, a, b, by_target):
    whole = resolution_axis(n_in, 1.0, 1.0 / scale) if by_target else scale_axis(n_in, scale)
    start = int(min(a, b) * (n_in - 1))
    stop = max(start + 1, int(max(a, b) * n_in))
    lo, hi, local = snap_window(whole, n_in, start, stop)
    assert 0 <= lo <= start and stop <= hi <= n_in and local.step == whole.step and local.n_out >= 1
    first = (lo + local.shift) / whole.step  # the window's first output pixel on the whole grid
    assert first == pytest.approx(round(first), abs=1e-6)
    np.testing.assert_allclose(local.centres(0, local.n_out, -lo),
                               whole.centres(round(first), round(first) + local.n_out), atol=1e-9)
    covered = local.centres(0, local.n_out) + lo  # whole-raster input coordinates of its centres
    assert covered[0] <= start + whole.step / 2 + 1e-9 and covered[-1] >= min(stop, whole.span) - 0.5 - whole.step / 2 - 1e-9


def test_axis_plan_owns_every_pixel_of_a_grown_grid():
    axis = resolution_axis(100, 5.0, 3.0)  # 166.67 output pixels: 167, the last one past the input's edge
    plan = axis_plan(100, axis, 40, 8, 2)
    assert plan[-1].out_stop == axis.n_out == 167
    np.testing.assert_allclose(coverage(plan, axis.n_out), 1.0, atol=1e-6)


@pytest.mark.parametrize("tile, overlap, context", [(256, 32, 6), (24, 6, 6), (16, 12, 2)])
def test_a_block_reaches_the_tiles_its_blend_needs_and_no_other(tile, overlap, context):
    """A block of cells reaches, on each axis, every window whose output touches it (the one or more
    above it and to its left that its blend needs) and no other; its window is its cells'."""
    n = 1000 if tile == 256 else 120
    plan = tile_plan(n, n + 7, 4.0, (scale_axis(n, 4.0), scale_axis(n + 7, 4.0)), tile, overlap, context)
    assert len(plan.rows) >= 4 and len(plan.cols) >= 4
    cells = Cells(range(2, 4), range(1, 3))
    rows, cols = plan.reach(cells)
    x0, y0, w, h = plan.window(cells)
    assert (x0, y0, x0 + w, y0 + h) == (plan.col_edges[1], plan.row_edges[2], plan.col_edges[3], plan.row_edges[4])
    for tiles, reach, lo, hi in ((plan.rows, rows, y0, y0 + h), (plan.cols, cols, x0, x0 + w)):
        touching = [i for i, t in enumerate(tiles) if t.out_start < hi and t.out_stop > lo]
        assert list(reach) == touching  # the block's own windows and those before it that reach into it
    if tile == 256:  # the engine's default: exactly one context row and one context column
        assert (rows, cols) == (range(1, 4), range(0, 3))
    assert plan.reach(plan.cells) == (range(len(plan.rows)), range(len(plan.cols)))


def test_a_widened_grid_gains_output_pixels_within_the_whole_output_only():
    """Grid.widened (engine.reach.output_margin): up to n output pixels more on each side, on the same
    spacing, never past the whole output's edges; a grid that is the whole output (out_h/out_w 0)
    stays as it is."""
    axis = scale_axis(50, 2.5)  # 125 output pixels
    whole = Grid.whole(50, 50, 2.5)
    same, pads = whole.widened(2)
    assert pads == (0, 0, 0, 0) and (same.out_y0, same.out_x0) == (0, 0)
    assert np.array_equal(same.ys, whole.ys) and np.array_equal(same.xs, whole.xs)
    # a tile of output rows 1..40 and columns 60..124, its input starting at LR pixel 3
    tile = Grid(ys=axis.centres(1, 41, 3), xs=axis.centres(60, 125, 3), scale=2.5, out_y0=1, out_x0=60,
                in_y0=3, in_x0=3, in_h=50, in_w=50, out_h=125, out_w=125)
    wide, pads = tile.widened(2)
    assert pads == (1, 2, 2, 0)  # one row above (row 0 is the first), none past the last column
    assert (wide.out_y0, wide.out_x0, wide.shape) == (0, 58, (43, 67))
    np.testing.assert_allclose(wide.ys, axis.centres(0, 43, 3), atol=1e-9)
    np.testing.assert_allclose(wide.xs, axis.centres(58, 125, 3), atol=1e-9)
