"""Exceptions that carry a one-line message meant for the user."""


class LatentSRError(Exception):
    """Bad input or an unusable configuration: the message is shown as is, one line, no traceback."""


class Cancelled(LatentSRError):
    """The run was cancelled by the caller; nothing is left behind."""

    def __init__(self, message: str = "cancelled by the user"):
        super().__init__(message)


def single_line(message: str) -> str:
    """``message`` with line breaks and other control characters (which a user's own text may
    carry into it) written as escapes, so that it shows as one line."""
    import unicodedata

    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in message)
