"""LCMSR: a 1–4 step latent consistency sampler, with a single-call ONNX graph for one step."""
from __future__ import annotations

from ..samplers import sample_lcm
from ..schedulers import consistency
from .base import Method


def schedule(spec, steps: int) -> consistency.Schedule:
    """``spec``: the card's entry (engine.card.MethodSpec)."""
    return consistency.schedule(steps, spec.T, spec.sigma_data)


def new_spec() -> dict:
    return {"T": consistency.T, "sigma_data": consistency.SIGMA_DATA, "steps": LCMSR.default_steps,
            "max_steps": LCMSR.max_steps}


def fused_problem(spec) -> str | None:
    """One-step LCMSR starts from the noise alone: ᾱ(T) = 0."""
    a, b = consistency.noise_coefficients(spec.T, spec.T)
    if float(a) != 0.0 or float(b) != 1.0:
        return "one-step LCMSR expects pure noise at t = T"
    return None


LCMSR = Method("lcmsr", "LCMSR (one-step latent consistency)", "LCMSR", stochastic=True, default_steps=1,
               max_steps=4, default_detail=1.0, roles=("condition", "denoiser"), sampler=sample_lcm,
               schedule=schedule, fused_graph="lcmsr.onestep", fused_inputs=("noise",), new_spec=new_spec,
               fused_problem=fused_problem)
