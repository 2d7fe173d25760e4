"""What the algorithms share: parameters with help text, GDAL-only raster inputs, and the engine
call (its log in the Processing log, progress and cancel through the feedback, and every failure
as a one-line QgsProcessingException)."""
from __future__ import annotations

import html
import logging

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingParameterDefinition

from ..engine import pipeline
from ..engine.errors import Cancelled, LatentSRError, single_line

ENGINE_LOGGER = pipeline.__name__.rsplit(".", 1)[0]


class LatentSRAlgorithm(QgsProcessingAlgorithm):
    """The LatentSR algorithms' common ground: their group, a fresh instance of the same class,
    parameters with help text, and GDAL-only raster inputs."""

    def group(self):
        return "Super-resolution"

    def groupId(self):  # noqa: N802 - QGIS API
        return "superresolution"

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def help_paragraphs(self) -> list:
        """The help text as plain-text paragraphs, each a string or a (bold lead, text) pair."""
        return []

    def shortHelpString(self):  # noqa: N802 - QGIS API
        """The paragraphs, then every parameter with its help, all escaped: the dialog reads this as
        rich text, where a bare "<" would start a tag and cut the rest off."""
        parts = []
        for paragraph in self.help_paragraphs():
            lead, text = paragraph if isinstance(paragraph, tuple) else ("", paragraph)
            parts.append(f"<p><b>{html.escape(lead)}</b> {html.escape(text)}</p>" if lead else f"<p>{html.escape(text)}</p>")
        items = "".join(f"<li><b>{html.escape(p.name())}</b> ({html.escape(p.description())}): {html.escape(p.help())}</li>"
                        for p in self.parameterDefinitions())
        return "".join(parts) + (f"<p><b>Parameters</b></p><ul>{items}</ul>" if items else "")

    def add_parameter(self, param, help_text: str, advanced: bool = False) -> None:
        """Add ``param`` with its help text, in the advanced section if asked."""
        param.setHelp(help_text)
        if advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param)

    def gdal_layer(self, parameters, name: str, context):
        """The raster layer of parameter ``name`` (None when empty); other providers than GDAL are refused."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is not None and layer.providerType() != "gdal":
            raise QgsProcessingException(f"Only GDAL rasters are supported, not '{layer.providerType()}' layers.")
        return layer


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
        raise QgsProcessingException("Cancelled: no output was written.") from None
    except LatentSRError as exc:
        raise QgsProcessingException(single_line(str(exc))) from None
    except Exception as exc:  # noqa: BLE001 - Processing shows one clear line, the log keeps the detail
        logging.getLogger(__name__).exception("%s failed", what)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise QgsProcessingException(f"{what} failed: {type(exc).__name__}: {first}") from None
    finally:
        logger.removeHandler(handler)
