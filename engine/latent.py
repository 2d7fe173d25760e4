"""The learned methods without a backend: band groups, noise, the samplers, and one per-tile routine.

regression, E²DiffSR and LCMSR run the conditioning net on the bicubic LR to get a latent, turn it into
a clean latent (regression: as is; e2diffsr: an N-step DDPM chain; lcmsr: a 1–4 step consistency
sampler), and decode it with the continuous-scale decoder at the grid's exact output positions. That
routine is ``run_tile``, written once here. A backend (engine.torch_backend, engine.onnx_backend) only
says how to call the three networks with their named inputs (engine.models.inputs): it implements
``Networks``. The samplers are engine.samplers, their schedules engine.schedulers.

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
seams; the same seed gives the same output. Everything here works on torch tensors (training runs
run_tile on its networks) and numpy arrays alike. This module never imports torch.
"""
from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol

import numpy as np

from .grid import Grid
from .models.inputs import ConditionInputs, DecoderInputs, DenoiserInputs
from .models.sampling import Plan
from .noise import gaussian
from .reach import method_halo, output_margin

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


def denoiser_model(denoiser) -> Callable:
    """The samplers' ``model(x, t_frac, cond, inv_scale)`` (engine.samplers) over a backend's denoiser,
    which takes DenoiserInputs; t_frac, a float, is given in the shape of inv_scale."""

    def model(x, t_frac: float, cond, inv_scale):
        return denoiser(DenoiserInputs(x, cond, constant_like(inv_scale, t_frac), inv_scale))

    return model


def blend(z_det, z_sample, detail: float):
    """The clean latent at detail D: z_det + D·(z_sample − z_det) (torch tensors or numpy arrays alike)."""
    return z_det + float(detail) * (z_sample - z_det)


def latent_guess(cond, spec):
    """The regression latent in a condition (engine.models.condition): the condition itself, or, when
    the card entry ``spec`` (engine.card.MethodSpec) gives it ``features`` or a ``spread``, its first
    ``latent`` channels."""
    return cond[:, :spec.latent] if spec.split else cond


def log_spread(cond, spec):
    """The log spread in a condition of a card with ``spread``: the ``latent`` channels after the guess."""
    n = spec.latent
    return cond[:, n:2 * n]


def from_residual(cond, spec: dict, residual):
    """The clean latent of a sampler's output. A card with ``spread`` diffuses the residual
    standardised per cell, (z − guess)/spread, with the spread the conditioning net predicts from the
    LR (the mean absolute deviation of the true latent from its guess): the latent is then guess +
    spread·residual, so the samples vary where the LR is textured and stay at the guess where it is
    flat. Without it the sampler's output is the latent itself."""
    if not spec.spread:
        return residual
    log = log_spread(cond, spec)
    spread = np.exp(log) if isinstance(log, np.ndarray) else log.exp()
    return latent_guess(cond, spec) + spread * residual


class Method(Protocol):
    """What this module needs of a method (engine.registry.base.Method): its name, whether it draws
    noise, its sampler (engine.samplers), None for a method that decodes the condition's latent guess as
    is, and ``schedule(spec, steps)``, the sampler's schedule from the card entry ``spec``."""

    name: str
    stochastic: bool
    sampler: Callable | None
    schedule: Callable | None


def sample_latent(method: Method, spec, steps: int, denoiser, cond, inv_scale, noise, detail: float = 1.0):
    """The clean (normalised) latent of ``method`` (engine.registry) from its condition: the condition's
    latent guess for a method without a sampler and at detail 0 (no sampler call), else the method's sample
    (from_residual) blended with that guess at ``detail`` (torch tensors or numpy arrays alike).
    ``denoiser`` takes DenoiserInputs (a backend's ``Networks.denoiser``); ``noise(k)`` is the start
    noise for k = 0 and the fresh noise of step k after it."""
    if method.sampler is None or detail <= 0:
        return latent_guess(cond, spec)
    schedule = method.schedule(spec, steps)
    residual = method.sampler(denoiser_model(denoiser), noise(0), schedule, {"cond": cond, "inv_scale": inv_scale},
                              noise)
    sample = from_residual(cond, spec, residual)
    return sample if detail == 1 else blend(latent_guess(cond, spec), sample, detail)


def latent_noise(seed: int, plan: Plan, groups: int, latent: int, step: int) -> np.ndarray:
    """The noise of sampler step ``step`` on a tile's latent (groups, latent, h_lat, w_lat), float32."""
    z = gaussian(seed, np.arange(groups * latent), plan.rows.cells, plan.cols.cells, stream=step)
    return z.reshape(groups, latent, *plan.latent_shape)


class Networks(Protocol):
    """What a backend implements: its arrays, and the three networks on them, each called with its
    named inputs (engine.models.inputs) in the backend's arrays. ``fused``, when not None, runs the
    whole tile in one call, ``fused(a, noise)`` (an exported graph), ``a`` as in run_tile."""

    fused: Callable | None

    def array(self, x: np.ndarray): ...  # a numpy array as the backend's array

    def numpy(self, x) -> np.ndarray: ...

    def running(self) -> ContextManager: ...  # around the networks' calls of one tile

    def condition(self, inputs: ConditionInputs): ...

    def denoiser(self, inputs: DenoiserInputs): ...

    def decoder(self, inputs: DecoderInputs): ...


def run_tile(nets: Networks, method: Method, spec, steps: int, a: dict, noise: Callable[[int], object],
             detail: float = 1.0):
    """SR of one tile's band groups: condition -> sampler (blended at ``detail``) -> decoder, in the
    backend's arrays, the one place this routine is written (the exported single-call graphs, training's
    validation and the stage-2 bench run it too). ``a`` holds the tile's inputs by name: lr, inv_scale
    and the tables of engine.models.sampling.Plan.arrays. CALL_DONE hears of each network call."""
    done = CALL_DONE.get() or (lambda fraction: None)
    calls = [0, steps + 2]  # made, at most: the condition, the sampler's steps, the decoder

    def called(out):
        calls[0] += 1
        done(calls[0] / calls[1])
        return out

    cond = called(nets.condition(ConditionInputs.of(a)))
    x0 = sample_latent(method, spec, steps, lambda inputs: called(nets.denoiser(inputs)), cond, a["inv_scale"], noise,
                       detail)
    sr = nets.decoder(DecoderInputs.of(a, z=x0 / float(spec.latent_scale)))
    done(1.0)
    return sr




@dataclass
class LatentMethod:
    """A learned SR method over a loaded bundle, ``method(tile, grid, seed)`` (engine.methods.SRMethod),
    run by a backend's networks."""

    kind: Method  # engine.registry: its name, its sampler, whether it draws noise
    nets: Networks
    spec: object  # the card's entry for this method (engine.card.MethodSpec)
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
        """The LR pixels of context a tile needs at ``scale`` (engine.reach.method_halo): with the card's
        edge of the sampled latent at this method's steps when it samples."""
        return method_halo(self.decoder, scale, None if self.deterministic else self.spec.edge(self.steps))

    def __call__(self, tile: np.ndarray, grid: Grid, seed: int = 0) -> np.ndarray:
        n, h, w = tile.shape
        groups = band_groups(n, self.bands)
        wide, (top, bottom, left, right) = grid.widened(output_margin(self.decoder))  # engine.reach
        plan = Plan.build(h, w, wide, self.multiple)
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
            sr = ungroup(nets.numpy(sr), groups, n)
        return sr[:, top:sr.shape[1] - bottom, left:sr.shape[2] - right]


def describe(method: LatentMethod, model: str, where: str) -> None:
    """Log what runs: method, model, backend and device, steps."""
    steps = method.steps
    log.info("%s: model %s, %s, %s%s", method.name, model, where,
             f"{steps} step{'s' * (steps > 1)}" if steps else "one pass",
             f", detail {method.detail:g}" if method.stochastic else "")
