"""LCMSR's consistency parameterisation, noise schedule and samplers (pure math).

f(z_t, t) = c_skip(t)·z_t + c_out(t)·F(z_t, t), with u = TIME_SCALE·t/T, c_skip = σd²/(u²+σd²) and
c_out = u/sqrt(u²+σd²), σd = 0.5, T = 1000, TIME_SCALE = 10 (``boundary``): at t = 0, c_skip = 1 and
c_out = 0, so f(z, 0) = z exactly (the boundary condition). The forward process is the cosine
variance-preserving schedule, with ᾱ(0) = 1 and ᾱ(T) = 0 (pure noise), so one-step sampling is
z0 = f(noise, T).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

T = 1000
SIGMA_DATA = 0.5
TIME_SCALE = 10.0  # u = TIME_SCALE·t/T: the boundary scalings' time (diffusers' LCMScheduler timestep_scaling)
DELTA = 250
COSINE_OFFSET = 0.008


def boundary(t, total: int = T, sigma_data: float = SIGMA_DATA):
    """(c_skip(t), c_out(t)) of the consistency function, t a number, numpy array or torch tensor;
    the one place they are computed (the engine's sampler and training both go through
    ``consistency``)."""
    u = TIME_SCALE * t / total
    return sigma_data ** 2 / (u ** 2 + sigma_data ** 2), u / (u ** 2 + sigma_data ** 2) ** 0.5


def consistency(z_t, f_out, t, total: int = T, sigma_data: float = SIGMA_DATA):
    """f(z_t, t) from the network output F."""
    c_skip, c_out = boundary(t, total, sigma_data)
    return c_skip * z_t + c_out * f_out


def alpha_bar(t, total: int = T) -> np.ndarray:
    """Cosine schedule ᾱ(t) in [0, 1], exactly 1 at t = 0 and 0 at t = T."""
    t = np.asarray(t, dtype=np.float64)
    s = COSINE_OFFSET
    f = np.cos((t / total + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    return np.where(t <= 0, 1.0, np.where(t >= total, 0.0, np.clip(f, 0.0, 1.0)))


def noise_coefficients(t, total: int = T) -> tuple[np.ndarray, np.ndarray]:
    """(sqrt(ᾱ), sqrt(1-ᾱ)) so that z_t = a·z0 + b·noise."""
    ab = alpha_bar(t, total)
    return np.sqrt(ab), np.sqrt(1.0 - ab)


def earlier(t2, delta: int = DELTA):
    """The target timestep of consistency training: t1 = max(t2 - Δ, 0)."""
    return np.maximum(np.asarray(t2) - delta, 0)


def timesteps(n: int, total: int = T) -> list[int]:
    """Timesteps of an n-step sampler: T, then evenly spaced re-noising levels (n=2: T, T/2)."""
    if n < 1:
        raise ValueError(f"steps must be at least 1, got {n}")
    return [int(round(total * (n - k) / n)) for k in range(n)]


@dataclass(frozen=True)
class Schedule:
    """What an n-step consistency sampler goes through (engine.samplers.lcm), built from the card apart
    from the sampler: its timesteps (the first is T, pure noise), T and σd."""

    timesteps: tuple[int, ...]
    total: int = T
    sigma_data: float = SIGMA_DATA


def schedule(n: int, total: int = T, sigma_data: float = SIGMA_DATA) -> Schedule:
    """The schedule of an n-step sampler."""
    return Schedule(tuple(timesteps(n, total)), total, sigma_data)
