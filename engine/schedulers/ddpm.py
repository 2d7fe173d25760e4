"""E²DiffSR's short, steep DDPM chain (T = 4) and its N-step sampler.

Timesteps are integers 1..T; t = 0 is the clean latent (ᾱ = 1). ``step`` moves from t to an
earlier t_prev with the DDIM update; eta = 1 is the DDPM posterior (ancestral sampling), eta = 0
the deterministic DDIM path. The arithmetic works on floats, numpy arrays and torch tensors alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_BETAS = (0.1, 0.3, 0.6, 0.9)
T = len(DEFAULT_BETAS)  # the chain's length: its last timestep


def alphas_bar(betas: Sequence[float] = DEFAULT_BETAS) -> np.ndarray:
    """ᾱ_t for t = 0..T (index t), with ᾱ_0 = 1."""
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.size == 0 or np.any(b <= 0) or np.any(b >= 1):
        raise ValueError(f"betas must be a non-empty list of numbers in (0, 1), got {list(betas)}")
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


def timesteps(n: int, total: int = T) -> list[int]:
    """The n timesteps an n-step sampler visits, from ``total`` down (evenly spaced, distinct, ≥ 1);
    the arguments in consistency.timesteps' order."""
    if not 1 <= n <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {n}")
    return [int(t) for t in np.round(np.linspace(total, 0, n + 1))[:n]]


def chain(n: int, total: int = T) -> list[tuple[int, int]]:
    """(t, t_prev) pairs of an n-step sampler; the last t_prev is 0."""
    ts = timesteps(n, total) + [0]
    return list(zip(ts[:-1], ts[1:]))


@dataclass(frozen=True)
class Schedule:
    """What an n-step run of the chain goes through (engine.samplers.ddim), built from the card apart
    from the sampler: its steps (t, t_prev), ᾱ_t for t = 0..T, and the card's eta and prediction."""

    steps: tuple[tuple[int, int], ...]
    abar: tuple[float, ...]
    eta: float = 1.0
    prediction: str = "eps"

    @property
    def total(self) -> int:
        """T, the chain's last timestep: the denoiser is told t/T."""
        return len(self.abar) - 1


def schedule(n: int, betas: Sequence[float] = DEFAULT_BETAS, eta: float = 1.0, prediction: str = "eps") -> Schedule:
    """The schedule of an n-step sampler on the chain of ``betas``."""
    abar = alphas_bar(betas)
    return Schedule(tuple(chain(n, len(abar) - 1)), tuple(float(a) for a in abar), eta, prediction)


def root(x):
    """√x of a number (a float), a numpy array or a torch tensor (of its own type)."""
    if isinstance(x, (int, float)):
        return math.sqrt(x)
    return x.sqrt() if hasattr(x, "sqrt") else np.sqrt(x)


def q_sample(x0, noise, abar_t):
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise; ᾱ_t a number, or per sample an array or tensor that
    broadcasts against x0 (training draws one t per sample)."""
    return root(abar_t) * x0 + root(1.0 - abar_t) * noise


def predict_x0(x_t, eps, abar_t: float):
    """The clean latent implied by an ε prediction."""
    return (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)


PREDICTIONS = ("eps", "x0")  # what the denoiser outputs: the noise ε, or the clean latent z0


def predict_eps(x_t, x0, abar_t: float):
    """The noise implied by a clean-latent (z0) prediction."""
    return (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1.0 - abar_t)


def step_coefficients(abar_t: float, abar_prev: float, eta: float = 1.0) -> tuple[float, float, float]:
    """(a, b, sigma) of x_prev = a·x0 + b·eps + sigma·noise."""
    var = eta ** 2 * (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
    sigma = math.sqrt(max(var, 0.0))
    return math.sqrt(abar_prev), math.sqrt(max(1.0 - abar_prev - sigma ** 2, 0.0)), sigma


def step(x_t, out, abar_t: float, abar_prev: float, noise=None, eta: float = 1.0, prediction: str = "eps"):
    """One sampler step from t to t_prev given the denoiser's output ``out`` (ε or z0, per
    ``prediction``): returns (x_prev, x0_hat). ``noise`` may be None when sigma is 0 (eta = 0, or
    t_prev = 0)."""
    if prediction == "x0":
        x0, eps = out, predict_eps(x_t, out, abar_t)
    else:
        x0, eps = predict_x0(x_t, out, abar_t), out
    a, b, sigma = step_coefficients(abar_t, abar_prev, eta)
    x_prev = a * x0 + b * eps
    if sigma > 0:
        x_prev = x_prev + sigma * noise
    return x_prev, x0
