import numpy as np
import pytest
import torch

from engine.schedulers import consistency as cm
from engine.schedulers import ddpm


def test_boundary_condition_is_exact():
    assert cm.boundary(0) == (1.0, 0.0)
    z = np.random.default_rng(0).normal(size=(4, 8, 8))
    f_out = np.random.default_rng(1).normal(size=(4, 8, 8)) * 100
    np.testing.assert_array_equal(cm.consistency(z, f_out, 0), z)
    zt = torch.from_numpy(z)
    assert torch.equal(cm.consistency(zt, torch.from_numpy(f_out), torch.zeros(1, 1, 1)), zt)


def test_published_coefficients():
    t = cm.T / cm.TIME_SCALE  # u = 1
    c_skip, c_out = cm.boundary(t)
    assert cm.TIME_SCALE == 10.0 and t == 100.0
    assert c_skip == pytest.approx(0.25 / 1.25)
    assert c_out == pytest.approx(1 / np.sqrt(1.25))


def test_boundary_is_the_same_on_numbers_arrays_and_tensors():
    """The engine samples with a number t, training with a tensor of per-sample t: one function,
    the same coefficients (to the last bits of torch's vectorised power)."""
    t = np.array([0.0, 1.0, 250.0, 999.0, 1000.0])
    arrays = cm.boundary(t)
    tensors = cm.boundary(torch.from_numpy(t))
    for k, number in enumerate(t):
        for array, tensor, scalar in zip(arrays, tensors, cm.boundary(float(number))):
            assert array[k] == scalar and tensor[k].item() == pytest.approx(scalar, rel=1e-15, abs=0)


def test_c_skip_falls_and_c_out_rises():
    c_skip, c_out = cm.boundary(np.arange(cm.T + 1, dtype=np.float64))
    assert np.all(np.diff(c_skip) < 0)
    assert np.all(np.diff(c_out) > 0)
    assert c_skip[-1] < 0.01 and c_out[-1] > 0.99


def test_consistency_schedule_ends_in_pure_noise():
    ab = cm.alpha_bar(np.arange(cm.T + 1))
    assert ab[0] == 1.0 and ab[-1] == 0.0
    assert np.all(np.diff(ab) < 0)
    a, b = cm.noise_coefficients(cm.T)
    assert a == 0.0 and b == 1.0
    assert list(cm.earlier(np.array([1, 250, 251, 1000]))) == [0, 0, 1, 750]


def test_consistency_sampler_timesteps():
    assert cm.timesteps(1) == [1000]
    assert cm.timesteps(2) == [1000, 500]
    assert cm.timesteps(4) == [1000, 750, 500, 250]
    with pytest.raises(ValueError):
        cm.timesteps(0)


def test_short_chain():
    ab = ddpm.alphas_bar()
    assert len(ab) == 5 and ab[0] == 1.0
    assert np.all(np.diff(ab) < 0) and ab[-1] < 0.05
    assert ddpm.T == 4
    assert ddpm.chain(4) == [(4, 3), (3, 2), (2, 1), (1, 0)]
    assert ddpm.chain(2) == [(4, 2), (2, 0)]
    assert ddpm.chain(1) == [(4, 0)]
    assert [t for t, _ in ddpm.chain(3)] == [4, 3, 1]
    assert ddpm.chain(2, 8) == [(8, 4), (4, 0)]
    with pytest.raises(ValueError):
        ddpm.timesteps(5)
    with pytest.raises(ValueError):
        ddpm.timesteps(0, 4)
    with pytest.raises(ValueError):
        ddpm.alphas_bar([0.5, 1.0])


def test_both_schedulers_take_the_steps_then_the_total():
    """timesteps(n, total) in both: n steps from total down, total defaulting to the scheduler's T."""
    for scheduler in (ddpm, cm):
        assert scheduler.timesteps(2) == scheduler.timesteps(2, scheduler.T)
        assert scheduler.timesteps(2, 8) == [8, 4]


def test_q_sample_takes_a_number_or_per_sample_levels():
    """Training draws one t per sample and noises with ddpm.q_sample as the tests do with one
    number: per sample it is the number's result."""
    rng = np.random.default_rng(2)
    x0, eps = (torch.from_numpy(a) for a in rng.normal(size=(2, 3, 2, 4, 4)).astype(np.float32))
    ab = ddpm.alphas_bar()
    t = torch.tensor([1, 4, 2])
    abar = torch.as_tensor(ab, dtype=torch.float32)[t].reshape(-1, 1, 1, 1)
    batch = ddpm.q_sample(x0, eps, abar)
    assert torch.equal(batch, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)  # what training wrote inline
    for k in range(3):
        torch.testing.assert_close(batch[k], ddpm.q_sample(x0[k], eps[k], float(abar[k])), rtol=0, atol=1e-6)
    numbers = ddpm.q_sample(x0.numpy(), eps.numpy(), abar.numpy())
    np.testing.assert_allclose(numbers, batch.numpy(), rtol=0, atol=1e-6)


def test_ddpm_step_with_the_true_noise_recovers_x0():
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(2, 16)), rng.normal(size=(2, 16))
    ab = ddpm.alphas_bar()
    x = ddpm.q_sample(x0, eps, ab[4])
    np.testing.assert_allclose(ddpm.predict_x0(x, eps, ab[4]), x0, atol=1e-12)
    x_prev, x0_hat = ddpm.step(x, eps, ab[4], ab[0])
    np.testing.assert_allclose(x_prev, x0, atol=1e-12)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-12)


def test_ddpm_step_is_the_same_from_an_eps_or_a_z0_prediction():
    """The sampler's update depends only on the (ẑ0, ε̂) pair, which either prediction implies."""
    rng = np.random.default_rng(1)
    x0, eps, noise = rng.normal(size=(3, 2, 16))
    ab = ddpm.alphas_bar()
    for t, t_prev in ((4, 2), (3, 1), (1, 0)):
        x = ddpm.q_sample(x0, eps, ab[t])
        np.testing.assert_allclose(ddpm.predict_eps(x, x0, ab[t]), eps, atol=1e-9)
        from_eps = ddpm.step(x, eps, ab[t], ab[t_prev], noise, 1.0, "eps")
        from_x0 = ddpm.step(x, x0, ab[t], ab[t_prev], noise, 1.0, "x0")
        for a, b in zip(from_eps, from_x0):
            np.testing.assert_allclose(a, b, atol=1e-9)
    x = ddpm.q_sample(x0, eps, ab[1])
    assert np.array_equal(ddpm.step(x, x0, ab[1], ab[0], None, 1.0, "x0")[0], x0)  # the last step returns ẑ0 itself


def test_ddpm_posterior_variance():
    ab = ddpm.alphas_bar()
    betas = np.asarray(ddpm.DEFAULT_BETAS)
    for t in range(2, 5):
        _, _, sigma = ddpm.step_coefficients(ab[t], ab[t - 1], eta=1.0)
        assert sigma ** 2 == pytest.approx((1 - ab[t - 1]) / (1 - ab[t]) * betas[t - 1])
        assert ddpm.step_coefficients(ab[t], ab[t - 1], eta=0.0)[2] == 0.0
    assert ddpm.step_coefficients(ab[1], ab[0])[2] == 0.0


def test_the_samplers_share_one_signature():
    """Every sampler is called alike, sample_*(model, x, schedule, extra_args, noise), and every sampling
    method of the registry has one of them and a schedule built apart from it."""
    import inspect

    from engine.registry import REGISTRY
    from engine.samplers import SAMPLERS

    for sampler in SAMPLERS:
        assert list(inspect.signature(sampler).parameters) == ["model", "x", "schedule", "extra_args", "noise"]
    for method in REGISTRY.values():
        assert (method.sampler in SAMPLERS) == method.stochastic == callable(method.schedule)


def test_the_schedules_are_built_from_the_card_apart_from_the_samplers():
    chain = ddpm.schedule(2, (0.5, 0.5, 0.5, 0.5), eta=0.0, prediction="x0")
    assert chain.steps == ((4, 2), (2, 0)) and chain.total == 4 and chain.abar == (1.0, 0.5, 0.25, 0.125, 0.0625)
    assert (chain.eta, chain.prediction) == (0.0, "x0")
    assert cm.schedule(2, 1000, 0.5) == cm.Schedule((1000, 500), 1000, 0.5)


def test_the_samplers_tell_the_model_t_over_T_and_pass_extra_args_by_name():
    from engine.samplers import sample_ddim, sample_lcm

    seen = []

    def model(x, t_frac, cond, inv_scale):
        seen.append((t_frac, cond, inv_scale))
        return np.zeros_like(x)

    extra = {"cond": "c", "inv_scale": "s"}
    x = np.ones((1, 2, 2, 2))
    # eta 0: no step adds noise, so none is asked for; a zero ε keeps the latent on the DDIM path
    out = sample_ddim(model, x, ddpm.schedule(2, eta=0.0), extra)
    assert seen == [(1.0, "c", "s"), (0.5, "c", "s")]
    abar = ddpm.alphas_bar()
    np.testing.assert_allclose(out, x / np.sqrt(abar[4]))
    seen.clear()
    drawn = []
    out = sample_lcm(model, x, cm.schedule(2), extra, lambda k: drawn.append(k) or np.zeros_like(x))
    assert seen == [(1.0, "c", "s"), (0.5, "c", "s")] and drawn == [1]
    # a zero F: f = c_skip·z; the second step re-noises f(x, T) to t = T/2 with zero noise
    a = float(cm.noise_coefficients(500)[0])
    np.testing.assert_allclose(out, cm.boundary(500)[0] * a * cm.boundary(1000)[0] * x)
