"""A guard against the steps that break a run: skip an update whose gradient is far out of line.

A long stage 1 at the recipe's peak rate diverged at step 2444 (docs/MODELS.md, "Nor, as it stands, a
longer schedule"): the loss, 0.02–0.05 until then, rose to 5.5, 54 and 229 within ten steps and the
regression path fell to bicubic. Clipping the gradient's norm does not stop such a step under Adam,
which divides each parameter's update by its own running scale: a gradient many times the usual one
still moves the quiet parameters by several times the learning rate.

So before the optimizer steps, the gradient's norm (before clipping) is compared with the median of
the last WINDOW admitted steps' norms. A norm that is not finite, or over the factor times that median,
skips the update: the weights, their EMA and the optimizer state stay as they were, and the run goes
on to the next step's batch. The window is part of the checkpoint, so a resumed run decides as the
uninterrupted one would. PATIENCE skips in a row mean that the weights themselves are broken, not one
batch: the run stops with an error rather than spinning.

The factor is a run's ``--guard`` (0: off; training.recipe gives it). The recipe guards stage 1 only: the stages with a critic
have heavy-tailed gradients, which a factor of 10 would keep skipping (docs/MODELS.md, Training).
"""
from __future__ import annotations

import math
import statistics

WINDOW = 200  # admitted steps whose gradient norms make the median
WARMUP = 50  # admitted steps before the guard judges (a non-finite norm is always skipped)
PATIENCE = 25  # this many skips in a row stop the run


def is_spike(norm: float, recent: list[float], factor: float, warmup: int = WARMUP) -> bool:
    """Whether a step with this gradient norm should be skipped, given the recent admitted norms."""
    if not math.isfinite(norm):
        return True
    if len(recent) < warmup:
        return False
    return norm > factor * statistics.median(recent)


class StepGuard:
    """The recent admitted norms and the run of skips; ``admit`` decides one step."""

    def __init__(self, factor: float, window: int = WINDOW, warmup: int = WARMUP, patience: int = PATIENCE):
        self.factor, self.window, self.warmup, self.patience = factor, window, warmup, patience
        self.recent: list[float] = []
        self.in_a_row = 0

    def admit(self, norm: float) -> bool:
        if is_spike(norm, self.recent, self.factor, self.warmup):
            self.in_a_row += 1
            return False
        self.in_a_row = 0
        self.recent = (self.recent + [norm])[-self.window:]
        return True

    @property
    def median(self) -> float:
        return statistics.median(self.recent) if self.recent else math.nan

    @property
    def stuck(self) -> bool:
        return self.in_a_row >= self.patience

    def state(self) -> dict:
        return {"recent": list(self.recent), "in_a_row": self.in_a_row}

    def load_state(self, state: dict) -> None:
        self.recent = [float(v) for v in state.get("recent", [])][-self.window:]
        self.in_a_row = int(state.get("in_a_row", 0))
