"""The base class of the LatentSR algorithms: their group, a fresh instance of the same class,
parameters with help text, and GDAL-only raster inputs."""
from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingParameterDefinition


class LatentSRAlgorithm(QgsProcessingAlgorithm):
    """The LatentSR algorithms' common ground: their group, a fresh instance of the same class,
    parameters with help text, and GDAL-only raster inputs."""

    def group(self):
        return "Super-resolution"

    def groupId(self):  # noqa: N802 - QGIS API
        return "superresolution"

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

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
