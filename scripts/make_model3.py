"""Write resources/processing_models/superresolve_and_evaluate.model3, the Model Builder example:
latentsr:superresolve on an LR raster, then latentsr:evaluate of the result against a reference
HR raster (with the LR for the consistency PSNR): an HTML report and an SR − HR difference raster.

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

    from latentsr.engine.methods import DEFAULTS
    from latentsr.engine.registry import METHODS, REGISTRY

    model = QgsProcessingModelAlgorithm("Super-resolve and evaluate", "LatentSR")
    model.setHelpContent({
        "ALG_DESC": "Super-resolves a low-resolution raster with LatentSR, then scores the result against a "
                    "reference high-resolution raster of the same area (PSNR, SSIM, ERGAS, SAM, consistency PSNR, "
                    "high-frequency ratio) in an HTML report, with an SR − reference difference raster.",
        "input": "The low-resolution raster (any GDAL raster layer).",
        "reference": "The high-resolution reference: round(input size × scale) pixels over the same extent, "
                     "for example the raster the input was degraded from.",
        "scale": "Continuous scale, greater than 1 and at most 8.",
        "method": ", ".join(REGISTRY[m].short + (" (default)" if m == DEFAULTS.method else "") for m in METHODS) + ".",
    })
    inputs = [
        QgsProcessingParameterRasterLayer("input", "Input raster"),
        QgsProcessingParameterRasterLayer("reference", "Reference (high-resolution) raster"),
        QgsProcessingParameterNumber("scale", "Scale factor", QgsProcessingParameterNumber.Double, 2.0,
                                     minValue=1.0, maxValue=8.0),
        QgsProcessingParameterEnum("method", "Method", [REGISTRY[m].label for m in METHODS],
                                   defaultValue=METHODS.index(DEFAULTS.method)),
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

    evaluate = QgsProcessingModelChildAlgorithm("latentsr:evaluate")
    evaluate.setChildId("evaluate")
    evaluate.setDescription("Evaluate super-resolution")
    evaluate.setPosition(QPointF(420, 330))
    evaluate.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("superresolve", "OUTPUT")])
    for name, source in (("REFERENCE", "reference"), ("LR", "input"), ("SCALE", "scale")):
        evaluate.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromModelParameter(source)])
    for name, value in (("METHOD", 0), ("STEPS", 0), ("SEED", 0), ("BACKEND", 0), ("DEVICE", 0)):
        evaluate.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    outputs = {}
    for row, (name, child_output, description) in enumerate((
            ("report", "OUTPUT_HTML", "Evaluation report"),
            ("difference", "OUTPUT_DIFFERENCE", "Difference (SR − reference)"))):
        output = QgsProcessingModelOutput(name, description)
        output.setChildOutputName(child_output)
        output.setChildId("evaluate")
        output.setPosition(QPointF(640, 300 + 60 * row))
        outputs[name] = output
    evaluate.setModelOutputs(outputs)
    model.addChildAlgorithm(evaluate)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=DEFAULT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in (os.path.join(ROOT, "build", "plugins"), "/usr/share/qgis/python/plugins"):
        if path not in sys.path:
            sys.path.insert(0, path)
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    from latentsr.provider.provider import LatentSRProvider

    provider = LatentSRProvider()  # kept referenced while the model is built
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
