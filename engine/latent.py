"""The learned methods without a backend: band groups, noise, the samplers, and one per-tile routine.

regression, E²DiffSR and LCMSR run the conditioning net on the bicubic LR to get a latent, turn it into
a clean latent (regression: as is; e2diffsr: an N-step DDPM chain; lcmsr: a 1–4 step consistency
sampler), and decode it with the continuous-scale decoder at the grid's exact output positions. That
routine is ``run_tile``, written once here. A backend (engine.torch_backend, engine.onnx_backend) only
says how to call the three networks: it implements ``Networks``.

Bands. A model has a fixed band count m (3 for latentsr-rgb). The input bands are processed in
groups of m consecutive bands (1-3, 4-6, ...); a last group with fewer than m bands is filled by
cycling through its own bands (a single band is repeated m times), and only the outputs of its
real bands are kept. Group g draws its noise from latent channels g·latent .. g·latent+latent-1.

Detail. The stochastic methods take ``detail`` D in [0, 1], the faithful ↔ detailed control: the clean
latent is z = z_det + D·(z_sample − z_det), where z_det is the conditioning net's prediction (the
regression latent, the estimate of the posterior mean: latent_guess) and z_sample the sampler's full sample. D = 0 is
deterministic (the sampler is skipped and the seed does not matter), D = 1 is a full sample of the model.

Noise is a fixed function of (seed, sampler step, channel, global latent cell) (engine.noise,
aligned as in engine.models.sampling), so overlapping tiles get the same noise and blend without
seams; the same seed gives the same output. The samplers work on torch tensors (training unrolls
them) and numpy arrays alike. This module never imports torch.
"""
from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol

import numpy as np

from .grid import Grid
from .models.sampling import Plan
from .noise import gaussian
from .reach import method_halo
from .schedulers import consistency, ddpm

log = logging.getLogger(__name__)

# Set by the caller of a method (engine.render.sample_layers): called after each network call of
# run_tile with the fraction of the call done; it may raise engine.errors.Cancelled between two calls.
CALL_DONE: ContextVar[Callable[[float], None] | None] = ContextVar("latentsr_call_done", default=None)


def band_groups(n: int, bands: int) -> list[list[int]]:
    """Input band indices of each group of ``bands`` (the last one filled by cycling its own bands)."""
    groups = []
    for start in range(0, n, bands):
        real = list(range(start, min(start + bands, n)))
        groups.append([real[k % len(real)] for k in range(bands)])
    return groups


def ungroup(sr: np.ndarray, groups: list[list[int]], n: int) -> np.ndarray:
    """The n output bands from the per-group outputs ``sr`` (groups, bands, H, W)."""
    out = np.empty((n, *sr.shape[2:]), dtype=np.float32)
    for g, members in enumerate(groups):
        real = sorted(set(members))
        out[real] = sr[g, :len(real)]
    return out


def constant_like(like, value: float):
    """``value`` in the shape, dtype and device of ``like`` (a torch tensor or a numpy array)."""
    if isinstance(like, np.ndarray):
        return np.full_like(like, value)
    import torch

    return torch.full_like(like, value)


def e2diffsr_sample(denoiser, cond, inv_scale, steps: int, noise, betas=ddpm.DEFAULT_BETAS, eta: float = 1.0,
                    prediction: str = "eps"):
    """Clean latent from an n-step run of the short DDPM chain, starting from pure noise; the
    denoiser predicts ε or z0 (``prediction``, the card's; older bundles: ε).

    ``noise(k)`` gives a standard normal tensor shaped like the latent: k = 0 the start, k ≥ 1 the
    fresh noise of step k."""
    abar = ddpm.alphas_bar(betas)
    total = len(abar) - 1
    x = noise(0)
    for k, (t, t_prev) in enumerate(ddpm.chain(steps, total), start=1):
        out = denoiser(x, cond, constant_like(inv_scale, t / total), inv_scale)
        sigma = ddpm.step_coefficients(abar[t], abar[t_prev], eta)[2]
        x, _ = ddpm.step(x, out, abar[t], abar[t_prev], noise(k) if sigma > 0 else None, eta, prediction)
    return x


def lcmsr_sample(denoiser, cond, inv_scale, steps: int, noise, total: int = consistency.T,
                 sigma_data: float = consistency.SIGMA_DATA):
    """Clean latent from the consistency function: z0 = f(noise, T), then re-noise and call again
    for each further step. ``noise(k)`` as in e2diffsr_sample."""
    x = None  # the clean latent so far; the first step is at t = T, where ᾱ = 0: z_T is the noise itself
    for k, t in enumerate(consistency.timesteps(steps, total)):
        if x is None:
            z = noise(k)
        else:
            a, b = consistency.noise_coefficients(t, total)
            z = float(a) * x + float(b) * noise(k)
        f_out = denoiser(z, cond, constant_like(inv_scale, t / total), inv_scale)
        x = consistency.consistency(z, f_out, t, total, sigma_data)
    return x


def blend(z_det, z_sample, detail: float):
    """The clean latent at detail D: z_det + D·(z_sample − z_det) (torch tensors or numpy arrays alike)."""
    return z_det + float(detail) * (z_sample - z_det)


def latent_guess(cond, spec: dict):
    """The regression latent in a condition (engine.models.condition): the condition itself, or, when
    the card gives it ``features`` or a ``spread``, its first ``latent`` channels."""
    return cond[:, :int(spec["latent"])] if spec.get("features") or spec.get("spread") else cond


def log_spread(cond, spec: dict):
    """The log spread in a condition of a card with ``spread``: the ``latent`` channels after the guess."""
    n = int(spec["latent"])
    return cond[:, n:2 * n]


def from_residual(cond, spec: dict, residual):
    """The clean latent of a sampler's output. A card with ``spread`` diffuses the residual
    standardised per cell, (z − guess)/spread, with the spread the conditioning net predicts from the
    LR (the mean absolute deviation of the true latent from its guess): the latent is then guess +
    spread·residual, so the samples vary where the LR is textured and stay at the guess where it is
    flat. Without it the sampler's output is the latent itself."""
    if not spec.get("spread"):
        return residual
    log = log_spread(cond, spec)
    spread = np.exp(log) if isinstance(log, np.ndarray) else log.exp()
    return latent_guess(cond, spec) + spread * residual


class Method(Protocol):
    """What this module needs of a method (engine.registry.base.Method, which imports this module):
    its name, whether it draws noise, and its sampler ``sample(spec, denoiser, cond, inv_scale, steps,
    noise)``, None for a method that decodes the condition's latent guess as is."""

    name: str
    stochastic: bool
    sample: Callable | None


def sample_latent(method: Method, spec: dict, steps: int, denoiser, cond, inv_scale, noise, detail: float = 1.0):
    """The clean (normalised) latent of ``method`` (engine.registry) from its condition: the condition's
    latent guess for a method without a sampler and at detail 0 (no sampler call), else the method's sample
    (from_residual) blended with that guess at ``detail`` (torch tensors or numpy arrays alike)."""
    if method.sample is None or detail <= 0:
        return latent_guess(cond, spec)
    sample = from_residual(cond, spec, method.sample(spec, denoiser, cond, inv_scale, steps, noise))
    return sample if detail == 1 else blend(latent_guess(cond, spec), sample, detail)


def latent_noise(seed: int, plan: Plan, groups: int, latent: int, step: int) -> np.ndarray:
    """The noise of sampler step ``step`` on a tile's latent (groups, latent, h_lat, w_lat), float32."""
    z = gaussian(seed, np.arange(groups * latent), plan.rows.cells, plan.cols.cells, stream=step)
    return z.reshape(groups, latent, *plan.latent_shape)


class Networks(Protocol):
    """What a backend implements: its arrays, and the three networks on them. ``a`` holds a tile's
    inputs as the backend's arrays: lr, inv_scale and the tables of engine.models.sampling.Plan.arrays.
    ``fused``, when not None, runs the whole tile in one call, ``fused(a, noise)`` (an exported graph)."""

    fused: Callable | None

    def array(self, x: np.ndarray): ...  # a numpy array as the backend's array

    def numpy(self, x) -> np.ndarray: ...

    def running(self) -> ContextManager: ...  # around the networks' calls of one tile

    def condition(self, a: dict): ...

    def denoiser(self, z_t, cond, t_frac, inv_scale): ...

    def decoder(self, a: dict, z): ...


def run_tile(nets: Networks, method: Method, spec: dict, steps: int, a: dict, noise: Callable[[int], object],
             detail: float = 1.0):
    """SR of one tile's band groups: condition -> sampler (blended at ``detail``) -> decoder, in the
    backend's arrays. CALL_DONE hears of each network call."""
    done = CALL_DONE.get() or (lambda fraction: None)
    calls = [0, steps + 2]  # made, at most: the condition, the sampler's steps, the decoder

    def called(out):
        calls[0] += 1
        done(calls[0] / calls[1])
        return out

    cond = called(nets.condition(a))
    x0 = sample_latent(method, spec, steps, lambda *args: called(nets.denoiser(*args)), cond, a["inv_scale"], noise,
                       detail)
    sr = nets.decoder(a, x0 / latent_scale(spec))
    done(1.0)
    return sr


def latent_scale(spec: dict) -> float:
    return float(spec.get("latent_scale", 1.0))


@dataclass
class LatentMethod:
    """A learned SR method over a loaded bundle, ``method(tile, grid, seed)`` (engine.methods.SRMethod),
    run by a backend's networks."""

    kind: Method  # engine.registry: its name, its sampler, whether it draws noise
    nets: Networks
    spec: dict  # the card's entry for this method
    bands: int
    latent: int
    steps: int
    multiple: int  # the latent grid's alignment (latent_multiple)
    decoder: dict  # the card's decoder config: how far the method sees (engine.reach)
    detail: float = 1.0  # the faithful ↔ detailed control of a stochastic method (module notes)

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def stochastic(self) -> bool:
        return self.kind.stochastic

    @property
    def deterministic(self) -> bool:
        """Whether the output does not depend on the seed: a deterministic method, or detail 0."""
        return not self.stochastic or self.detail == 0

    def halo(self, scale: float) -> int:
        """The LR pixels of context a tile needs at ``scale`` (engine.reach.method_halo)."""
        return method_halo(self.decoder, scale, not self.deterministic)

    def __call__(self, tile: np.ndarray, grid: Grid, seed: int = 0) -> np.ndarray:
        n, h, w = tile.shape
        groups = band_groups(n, self.bands)
        plan = Plan.build(h, w, grid, self.multiple)
        arrays = dict(plan.arrays(), lr=np.ascontiguousarray(tile[np.array(groups)], dtype=np.float32),
                      inv_scale=np.full((len(groups), 1), 1.0 / grid.scale, dtype=np.float32))
        nets = self.nets

        def noise(k):
            return nets.array(latent_noise(seed, plan, len(groups), self.latent, k))

        with nets.running():
            a = {name: nets.array(x) for name, x in arrays.items()}
            if nets.fused is not None:  # the backend built it for this run (engine.registry.Method.fuses)
                sr = nets.fused(a, noise)
            else:
                sr = run_tile(nets, self.kind, self.spec, self.steps, a, noise, self.detail)
            return ungroup(nets.numpy(sr), groups, n)


def describe(method: LatentMethod, model: str, where: str) -> None:
    """Log what runs: method, model, backend and device, steps."""
    steps = method.steps
    log.info("%s: model %s, %s, %s%s", method.name, model, where,
             f"{steps} step{'s' * (steps > 1)}" if steps else "one pass",
             f", detail {method.detail:g}" if method.stochastic else "")
