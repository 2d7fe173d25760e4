"""E²DiffSR's sampler: an n-step run of the short DDPM chain with the DDIM update (eta = 1: ancestral
DDPM, eta = 0: deterministic DDIM), the denoiser predicting ε or z0 (engine.schedulers.ddpm)."""
from __future__ import annotations

from ..schedulers import ddpm


def sample_ddim(model, x, schedule: ddpm.Schedule, extra_args: dict | None = None, noise=None):
    """The clean latent from the start noise ``x`` at t = T (engine.samplers for the signature); ``noise``
    is needed only where a step adds noise (eta > 0 before its last step)."""
    extra_args = extra_args or {}
    for k, (t, t_prev) in enumerate(schedule.steps, start=1):
        out = model(x, t / schedule.total, **extra_args)
        abar_t, abar_prev = schedule.abar[t], schedule.abar[t_prev]
        sigma = ddpm.step_coefficients(abar_t, abar_prev, schedule.eta)[2]
        x, _ = ddpm.step(x, out, abar_t, abar_prev, noise(k) if sigma > 0 else None, schedule.eta, schedule.prediction)
    return x
