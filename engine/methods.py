"""The SR methods the engine can run, behind one interface.

A method is a callable ``method(tile, grid) -> sr`` where ``tile`` is a float32 C×h×w LR tile in
normalised units and ``grid`` (engine.grid.Grid) says where each output pixel centre falls on the
tile. It returns float32 C×len(grid.ys)×len(grid.xs). ``context`` is the halo, in LR pixels, that
the method needs around the part of a tile it is trusted on; the tiler never gives it less.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .allocator import fix_mmap_threshold
from .errors import LatentSRError
from .grid import Grid
from .resample import cubic_resample

METHODS = ("lcmsr", "e2diffsr", "regression", "bicubic")
LEARNED = ("lcmsr", "e2diffsr", "regression")


class SRMethod(Protocol):
    name: str
    deterministic: bool
    context: int

    def __call__(self, tile: np.ndarray, grid: Grid) -> np.ndarray: ...


@dataclass
class Bicubic:
    """Keys cubic convolution (a = -0.5) at the exact output pixel centres."""

    name: str = "bicubic"
    deterministic: bool = True
    context: int = 2

    def __call__(self, tile: np.ndarray, grid: Grid) -> np.ndarray:
        return cubic_resample(tile, grid.ys, grid.xs)


@dataclass(frozen=True)
class MethodOptions:
    steps: int | None = None
    seed: int = 0
    backend: str = "auto"
    device: str = "auto"
    model: str | None = None


def build_method(name: str, options: MethodOptions = MethodOptions()) -> SRMethod:
    """The method called ``name``; a LatentSRError if it cannot run here."""
    if name == "bicubic":
        return Bicubic()
    if name in LEARNED:
        try:
            from . import neural
        except ImportError:
            raise LatentSRError(f"method '{name}' is not available in this version: use bicubic") from None
        fix_mmap_threshold()  # the networks' large, short-lived tensors must not pile up in the heap
        return neural.build_method(name, options)
    raise LatentSRError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
