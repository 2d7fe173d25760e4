"""Write resources/processing_models/superresolve_and_evaluate.model3, the Model Builder example:
latentsr:superresolve, then native:rasterlayerstatistics on its output (a quick check of the
result's values; latentsr:evaluate takes that place once it exists).

Built with QgsProcessingModelAlgorithm so the XML is what QGIS itself writes. Run it after
`make setup` (it imports the plugin from build/plugins):
    QT_HASH_SEED=0 QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/make_model3.py  # stable attribute order
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "resources", "processing_models", "superresolve_and_evaluate.model3")
log = logging.getLogger("make_model3")


def build_model():
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterEnum,
        QgsProcessingParameterNumber,
        QgsProcessingParameterRasterLayer,
    )
    from qgis.PyQt.QtCore import QPointF

    from latentsr.provider.superresolve import METHODS

    model = QgsProcessingModelAlgorithm("Super-resolve and evaluate", "LatentSR")
    model.setHelpContent({
        "ALG_DESC": "Super-resolves a raster with LatentSR, then reports the statistics of the result "
                    "(minimum, maximum, mean, standard deviation) as a quick check of its values.",
        "input": "Any GDAL raster layer.",
        "scale": "Continuous scale, greater than 1 and at most 8.",
        "method": "LCMSR (default), E²DiffSR, Regression or Bicubic.",
    })
    inputs = [
        QgsProcessingParameterRasterLayer("input", "Input raster"),
        QgsProcessingParameterNumber("scale", "Scale factor", QgsProcessingParameterNumber.Double, 2.0,
                                     minValue=1.0, maxValue=8.0),
        QgsProcessingParameterEnum("method", "Method", [m[0] for m in METHODS], defaultValue=0),
    ]
    for row, param in enumerate(inputs):
        component = QgsProcessingModelParameter(param.name())
        component.setPosition(QPointF(120, 80 + 70 * row))
        model.addModelParameter(param, component)

    sr = QgsProcessingModelChildAlgorithm("latentsr:superresolve")
    sr.setChildId("superresolve")
    sr.setDescription("Super-resolve raster")
    sr.setPosition(QPointF(420, 150))
    for name, source in (("INPUT", "input"), ("SCALE", "scale"), ("METHOD", "method")):
        sr.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromModelParameter(source)])
    for name, value in (("STEPS", 0), ("BACKEND", 0), ("DEVICE", 0), ("TILE_SIZE", 256), ("OVERLAP", 32),
                        ("SEED", 0), ("SAMPLES", 1), ("CONSISTENCY", False), ("COG", False)):
        sr.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    sr_output = QgsProcessingModelOutput("super_resolved", "Super-resolved raster")
    sr_output.setChildOutputName("OUTPUT")
    sr_output.setChildId("superresolve")
    sr_output.setPosition(QPointF(620, 110))
    sr.setModelOutputs({"super_resolved": sr_output})
    model.addChildAlgorithm(sr)

    stats = QgsProcessingModelChildAlgorithm("native:rasterlayerstatistics")
    stats.setChildId("statistics")
    stats.setDescription("Statistics of the result")
    stats.setPosition(QPointF(420, 300))
    stats.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("superresolve", "OUTPUT")])
    stats.addParameterSources("BAND", [QgsProcessingModelChildParameterSource.fromStaticValue(1)])
    stats_output = QgsProcessingModelOutput("statistics", "Statistics of the super-resolved raster")
    stats_output.setChildOutputName("OUTPUT_HTML_FILE")
    stats_output.setChildId("statistics")
    stats_output.setPosition(QPointF(620, 340))
    stats.setModelOutputs({"statistics": stats_output})
    model.addChildAlgorithm(stats)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=DEFAULT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in (os.path.join(ROOT, "build", "plugins"), "/usr/share/qgis/python/plugins"):
        if path not in sys.path:
            sys.path.insert(0, path)
    from qgis.analysis import QgsNativeAlgorithms
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    from latentsr.provider.provider import LatentSRProvider

    providers = [QgsNativeAlgorithms(), LatentSRProvider()]  # kept referenced while the model is built
    for provider in providers:
        QgsApplication.processingRegistry().addProvider(provider)
    model = build_model()
    ok, errors = model.validate()
    if not ok:
        log.error("the model is not valid: %s", "; ".join(errors))
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if not model.toFile(args.output):
        log.error("could not write %s", args.output)
        return 1
    log.info("%s", args.output)
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
