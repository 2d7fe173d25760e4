"""The samplers of the latent, one per file, all with one signature (k-diffusion's ``sample_*`` style):

    sample_x(model, x, schedule, extra_args=None, noise=None) -> the clean latent

- ``model(x, t_frac, **extra_args)``: the denoiser's output for the latent ``x`` at the fraction t/T of
  the schedule (a float; engine.latent.denoiser_model makes it from a backend's denoiser, with
  extra_args = cond and inv_scale);
- ``x``: the start, the noise at the schedule's first timestep (pure noise: ᾱ = 0 there);
- ``schedule``: what the steps go through, built apart from the sampler from the model card
  (engine.schedulers: ``ddpm.schedule``, ``consistency.schedule``; engine.registry says which);
- ``noise(k)``: the fresh standard normal noise of step k ≥ 1, shaped like ``x`` (engine.latent.latent_noise
  in the engine: a fixed function of the seed, the step and the latent cell, so tiles agree).

The arithmetic works on torch tensors (training unrolls it) and numpy arrays alike; nothing here imports torch.
"""
from __future__ import annotations

from .ddim import sample_ddim
from .lcm import sample_lcm

SAMPLERS = (sample_ddim, sample_lcm)
