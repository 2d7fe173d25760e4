"""The engine call of the algorithms: its log in the Processing log, progress and cancel through the
feedback, and every failure as a one-line QgsProcessingException."""
from __future__ import annotations

import logging

from qgis.core import QgsProcessingException

from ..engine import pipeline
from ..engine.errors import Cancelled, LatentSRError, single_line
from .i18n import tr

ENGINE_LOGGER = pipeline.__name__.rsplit(".", 1)[0]


class FeedbackHandler(logging.Handler):
    """Engine log records shown in the Processing log."""

    def __init__(self, feedback):
        super().__init__(logging.INFO)
        self.feedback = feedback

    def emit(self, record):
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.feedback.reportError(text, fatalError=False)
        else:
            self.feedback.pushInfo(text)


def run_engine(what: str, fn, request, feedback):
    """``fn(request, progress=..., is_cancelled=...)`` with the engine's log shown in ``feedback``."""
    handler = FeedbackHandler(feedback)
    logger = logging.getLogger(ENGINE_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return fn(request, progress=lambda f: feedback.setProgress(100.0 * f), is_cancelled=feedback.isCanceled)
    except Cancelled:
        raise QgsProcessingException(tr("Cancelled: no output was written.")) from None
    except LatentSRError as exc:
        raise QgsProcessingException(single_line(str(exc))) from None
    except Exception as exc:  # noqa: BLE001 - Processing shows one clear line, the log keeps the detail
        logging.getLogger(__name__).exception("%s failed", what)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise QgsProcessingException(tr("{what} failed: {kind}: {first}").format(
            what=what, kind=type(exc).__name__, first=first)) from None
    finally:
        logger.removeHandler(handler)
