"""Bicubic: Keys cubic convolution with NumPy, no model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..grid import Grid
from ..resample import cubic_resample
from .base import Method


@dataclass
class Bicubic:
    """Keys cubic convolution (a = -0.5) at the exact output pixel centres (engine.methods.SRMethod)."""

    name: str = "bicubic"
    deterministic: bool = True

    def halo(self, scale: float) -> int:
        return 2  # the cubic kernel's taps

    def __call__(self, tile: np.ndarray, grid: Grid, seed: int = 0) -> np.ndarray:
        return cubic_resample(tile, grid.ys, grid.xs)


BICUBIC = Method(Bicubic.name, "Bicubic", "Bicubic", plain=Bicubic)
