"""The base class of the LatentSR algorithms: their group, a fresh instance of the same class,
parameters with help text, and GDAL-only raster inputs."""
from __future__ import annotations

import html

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingParameterDefinition
from .i18n import tr


class LatentSRAlgorithm(QgsProcessingAlgorithm):
    """The LatentSR algorithms' common ground: their group, a fresh instance of the same class,
    parameters with help text, and GDAL-only raster inputs."""

    def group(self):
        return tr("Super-resolution")

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
            raise QgsProcessingException(tr("Only GDAL rasters are supported, not '{provider}' layers.").format(
                provider=layer.providerType()))
        return layer

    def detail(self, parameters, context) -> float | None:
        """The DETAIL parameter: None when empty (the model's default), else its value (the engine checks it)."""
        raw = parameters.get("DETAIL")
        if raw in (None, ""):
            return None
        if isinstance(raw, str):
            try:
                float(raw)
            except ValueError:
                raise QgsProcessingException(tr("DETAIL must be a number between 0 and 1, got '{raw}'").format(
                    raw=raw)) from None
        return self.parameterAsDouble(parameters, "DETAIL", context)
