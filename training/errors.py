"""The error type of the training code: a one-line message for the user, which ``python -m training``
prints as ``error: <message>`` with exit status 2 (no traceback)."""
from __future__ import annotations


class TrainingError(Exception):
    """Bad input or a failed check in training, bundling or export: the message is one line."""
