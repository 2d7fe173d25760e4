"""The error type of the training code: a one-line message for the user, which ``python -m training``
prints as ``error: <message>`` with exit status 2 (no traceback)."""
from __future__ import annotations


class TrainingError(Exception):
    """Bad input or a failed check in training, bundling or export: the message is one line."""


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM, a cancel) after saving a checkpoint that resumes
    it; ``signum``: the signal that stopped it (None: a cancel)."""

    def __init__(self, step: int, out, signum: int | None = None):
        super().__init__(f"stopped at step {step}; the checkpoint in {out} resumes it (run the same command again)")
        self.step, self.out, self.signum = step, out, signum
