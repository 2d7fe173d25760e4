import numpy as np

from engine.noise import gaussian, hash_grid


def test_same_coordinates_same_values():
    a = gaussian(7, [0, 1], range(5), range(6), stream=2)
    b = gaussian(7, [0, 1], range(5), range(6), stream=2)
    assert a.dtype == np.float32 and a.shape == (2, 5, 6)
    np.testing.assert_array_equal(a, b)


def test_a_window_equals_the_window_of_a_larger_grid():
    big = gaussian(3, range(4), range(-8, 40), range(100, 150))
    part = gaussian(3, [2, 3], range(10, 20), range(130, 133))
    np.testing.assert_array_equal(part, big[2:4, 18:28, 30:33])


def test_every_coordinate_changes_the_values():
    base = gaussian(1, [0], range(16), range(16), stream=0)
    for other in (gaussian(2, [0], range(16), range(16)), gaussian(1, [1], range(16), range(16)),
                  gaussian(1, [0], range(16), range(16), stream=1), gaussian(1, [0], range(1, 17), range(16))):
        assert np.mean(base == other) < 0.01
        assert abs(np.corrcoef(base.ravel(), other.ravel())[0, 1]) < 0.2


def test_standard_normal_statistics():
    z = gaussian(0, range(4), range(200), range(200)).astype(np.float64).ravel()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert np.all(np.isfinite(z))
    # quantiles of N(0, 1)
    q = np.quantile(z, [0.025, 0.16, 0.5, 0.84, 0.975])
    np.testing.assert_allclose(q, [-1.96, -0.994, 0.0, 0.994, 1.96], atol=0.03)
    # neighbouring cells are uncorrelated
    g = z.reshape(4, 200, 200)
    assert abs(np.corrcoef(g[:, :, :-1].ravel(), g[:, :, 1:].ravel())[0, 1]) < 0.01


def test_hash_is_a_full_64_bit_value():
    h = hash_grid(0, 0, [0], range(64), range(64))
    assert h.dtype == np.uint64
    assert len(np.unique(h)) == h.size
    assert (h >> np.uint64(63)).mean() > 0.4
