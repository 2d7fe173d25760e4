"""Exceptions that carry a one-line message meant for the user."""


class LatentSRError(Exception):
    """Bad input or an unusable configuration: the message is shown as is, one line, no traceback."""


class Cancelled(LatentSRError):
    """The run was cancelled by the caller; nothing is left behind."""

    def __init__(self, message: str = "cancelled by the user"):
        super().__init__(message)
