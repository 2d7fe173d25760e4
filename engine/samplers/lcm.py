"""LCMSR's sampler: the consistency function z0 = f(noise, T), then, for each further step, re-noise the
clean latent to the step's timestep and call it again (engine.schedulers.consistency)."""
from __future__ import annotations

from ..schedulers import consistency


def sample_lcm(model, x, schedule: consistency.Schedule, extra_args: dict | None = None, noise=None):
    """The clean latent from the start noise ``x`` at t = T, where ᾱ = 0: z_T is the noise itself
    (engine.samplers for the signature); ``noise`` is needed from the second step on."""
    extra_args = extra_args or {}
    z, total = x, schedule.total
    for k, t in enumerate(schedule.timesteps):
        if k:
            a, b = consistency.noise_coefficients(t, total)
            z = float(a) * x + float(b) * noise(k)
        x = consistency.consistency(z, model(z, t / total, **extra_args), t, total, schedule.sigma_data)
    return x
