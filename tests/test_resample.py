"""Bicubic sampling at arbitrary positions."""
import numpy as np

from engine.grid import Grid
from engine.registry.bicubic import Bicubic
from engine.resample import cubic_resample, keys_cubic, nearest_indices


def test_kernel_interpolates_and_sums_to_one():
    assert keys_cubic(np.array([0.0]))[0] == 1.0
    np.testing.assert_allclose(keys_cubic(np.array([1.0, 2.0, -1.0])), 0.0, atol=1e-12)
    for f in np.linspace(0, 1, 11):
        assert abs(keys_cubic(np.array([f + 1, f, f - 1, f - 2])).sum() - 1) < 1e-12


def test_reproduces_a_plane_exactly_inside():
    yy, xx = np.mgrid[0:20, 0:30].astype(np.float32)
    plane = (3 * yy - 2 * xx + 7)[None]
    g = Grid.whole(20, 30, 2.5)
    out = cubic_resample(plane, g.ys, g.xs)
    expected = 3 * g.ys[:, None] - 2 * g.xs[None, :] + 7
    inner = (slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(out[0][inner], expected[inner], atol=1e-4)


def test_integer_positions_return_the_samples():
    rng = np.random.default_rng(0)
    x = rng.random((2, 9, 11)).astype(np.float32)
    out = cubic_resample(x, np.arange(9.0), np.arange(11.0))
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_bicubic_method_shape():
    x = np.zeros((3, 13, 17), np.float32)
    g = Grid.whole(13, 17, 3.7)
    assert Bicubic()(x, g).shape == (3, 48, 63)


def test_nearest_indices():
    np.testing.assert_array_equal(nearest_indices(np.array([-0.6, -0.25, 0.49, 0.5, 3.9]), 4), [0, 0, 0, 1, 3])
