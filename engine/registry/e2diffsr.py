"""E²DiffSR: an N-step run of a short DDPM chain in the latent, ε- or z0-predicting."""
from __future__ import annotations

from ..samplers import sample_ddim
from ..schedulers import ddpm
from .base import Method


def schedule(spec, steps: int) -> ddpm.Schedule:
    """``spec``: the card's entry (engine.card.MethodSpec)."""
    return ddpm.schedule(steps, spec.betas, spec.eta, spec.prediction)


def new_spec() -> dict:
    return {"betas": list(ddpm.DEFAULT_BETAS), "eta": 1.0, "steps": E2DIFFSR.default_steps}


E2DIFFSR = Method("e2diffsr", "E²DiffSR (few-step latent diffusion)", "E²DiffSR", stochastic=True, default_steps=4,
                  max_steps=4, default_detail=1.0, roles=("condition", "denoiser"), sampler=sample_ddim,
                  schedule=schedule, new_spec=new_spec)
