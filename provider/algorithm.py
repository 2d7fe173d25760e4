"""The base class of the LatentSR algorithms: their group, a fresh instance of the same class,
parameters with help text, and GDAL-only raster inputs."""
from __future__ import annotations

import dataclasses
import html

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingParameterDefinition
from .i18n import tr

from ..engine.errors import LatentSRError, single_line
from ..engine.methods import BACKENDS, DEVICES, RunOptions
from ..engine.precision import PRECISIONS
from ..engine.registry import METHODS

# How each field of engine.methods.RunOptions is read from its parameter, the field's name in
# capitals (METHOD, STEPS, ...), and written back (``run_parameters``, for the dock).
READ = {
    "method": lambda alg, p, c: METHODS[alg.parameterAsEnum(p, "METHOD", c)],
    "steps": lambda alg, p, c: alg.parameterAsInt(p, "STEPS", c) or None,  # 0: the method's default
    "detail": lambda alg, p, c: alg.detail(p, c),
    "backend": lambda alg, p, c: BACKENDS[alg.parameterAsEnum(p, "BACKEND", c)],
    "device": lambda alg, p, c: DEVICES[alg.parameterAsEnum(p, "DEVICE", c)],
    "model": lambda alg, p, c: alg.parameterAsFile(p, "MODEL", c) or None,
    "consistency": lambda alg, p, c: alg.parameterAsBool(p, "CONSISTENCY", c),
    "precision": lambda alg, p, c: PRECISIONS[alg.parameterAsEnum(p, "PRECISION", c)],
    "seed": lambda alg, p, c: alg.parameterAsInt(p, "SEED", c),
    "samples": lambda alg, p, c: alg.parameterAsInt(p, "SAMPLES", c),
}
WRITE = {
    "method": METHODS.index,
    "steps": lambda steps: steps or 0,
    "backend": BACKENDS.index,
    "device": DEVICES.index,
    "precision": PRECISIONS.index,
}


def run_parameters(options: RunOptions) -> dict:
    """The parameters that give ``options`` (the inverse of LatentSRAlgorithm.run_options); an option
    left to its default (None) is left out."""
    values = {f.name.upper(): WRITE.get(f.name, lambda v: v)(getattr(options, f.name))
              for f in dataclasses.fields(RunOptions)}
    return {name: value for name, value in values.items() if value is not None}


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
        """The DETAIL parameter: None when empty (the model's default), else its value as a number (its
        range is the engine's one check, engine.methods.RunOptions); text that is no number is refused
        here, naming the parameter."""
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

    def run_options(self, parameters, context) -> RunOptions:
        """The run options of the parameters: each field of engine.methods.RunOptions that this
        algorithm has a parameter for (its name in capitals); a QgsProcessingException if they are not
        valid."""
        names = {p.name() for p in self.parameterDefinitions()}
        try:
            return RunOptions(**{f.name: READ[f.name](self, parameters, context)
                                 for f in dataclasses.fields(RunOptions) if f.name.upper() in names})
        except LatentSRError as exc:
            raise QgsProcessingException(single_line(str(exc))) from None
