"""Processing algorithm ``latentsr:evaluate``: a thin mapping of parameters onto engine.evaluate."""
from __future__ import annotations

import math

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..engine import evaluate, pipeline
from ..engine.report import render_text
from .algorithm import LatentSRAlgorithm
from .engine_run import run_engine
from ..engine.methods import BACKENDS, DEFAULTS, DETAIL_HELP, DETAIL_RANGE, DEVICES, steps_help
from ..engine.registry import MAX_STEPS, METHODS, REGISTRY
from .superresolve import offered_devices
from ..engine.precision import PRECISIONS
from .i18n import tr

def numbers() -> tuple:
    """(output name, report key, description) of the overall figures the algorithm returns."""
    return (("PSNR", "psnr", tr("Overall PSNR (dB)")), ("SSIM", "ssim", tr("Overall SSIM")),
            ("ERGAS", "ergas", tr("Overall ERGAS")), ("SAM", "sam", tr("Overall SAM (degrees)")),
            ("CONSISTENCY_PSNR", "consistency_psnr", tr("Overall Consistency PSNR (dB)")),
            ("HF_RATIO", "hf_ratio", tr("Overall High-frequency energy ratio")),
            ("LSD", "lsd", tr("Overall Log-spectral distance (dB)")),
            ("LATTICE", "lattice", tr("Overall Lattice figure of the added detail (dB)")),
            ("LATTICE_HR", "lattice_hr", tr("Overall Lattice figure of the reference (dB)")),
            ("IMPROVEMENT", "improvement", tr("Overall Improvement share")),
            ("OMISSION", "omission", tr("Overall Omission share")),
            ("HALLUCINATION", "hallucination", tr("Overall Hallucination share")))


class EvaluateAlgorithm(LatentSRAlgorithm):
    INPUT, REFERENCE, LR, SCALE, BANDS = "INPUT", "REFERENCE", "LR", "SCALE", "BANDS"
    METHOD, STEPS, SEED, BACKEND, DEVICE, MODEL = "METHOD", "STEPS", "SEED", "BACKEND", "DEVICE", "MODEL"
    PRECISION = "PRECISION"
    DETAIL = "DETAIL"
    OUTPUT_HTML, OUTPUT_DIFFERENCE, OUTPUT_CORRECTNESS = "OUTPUT_HTML", "OUTPUT_DIFFERENCE", "OUTPUT_CORRECTNESS"

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802 - QGIS API
        return tr("Evaluate super-resolution")

    def help_paragraphs(self):
        return [
            tr("Scores super-resolution against a reference high-resolution raster: PSNR, SSIM, ERGAS, SAM, the "
               "consistency PSNR (downsample(SR) against the LR), the high-frequency energy ratio and the log-spectral "
               "distance (LSD), per band and overall, and the correctness shares (improvement, omission, hallucination: "
               "ESA opensr-test's definitions with the L1 distance), in an HTML report, with an optional SR − HR "
               "difference raster and an optional raster of the per-pixel correctness class."),
            (tr("With an SR raster"), tr("(INPUT set): it is compared with the reference on the same pixel grid. The "
                "consistency PSNR uses the LR raster, or the reference degraded by SCALE when there is no LR; with "
                "neither it is not available.")),
            (tr("Without an SR raster"), tr("(INPUT empty): the reference is degraded by SCALE (antialiased bicubic, "
                "the training degradation), super-resolved with METHOD, and scored with bicubic beside it.")),
            tr("PSNR and SSIM use a data range of 255 for Byte rasters, else the reference's valid max − min. A border "
               "of ceil(scale) pixels is left out. Nodata pixels of either raster are left out of PSNR, ERGAS and SAM; "
               "SSIM and the HF ratio see them as equal in both rasters. The lattice figure (dB) is the power of what "
               "the result adds to a baseline at the LR pixel frequency (1/scale cycles per pixel) and its harmonics, "
               "against the neighbouring frequencies, beside the reference's own (0 dB: no peak; above the reference's: "
               "detail locked to the LR pixels); the baseline is the model's regression when METHOD is a diffusion method "
               "and INPUT is empty, else the bicubic of the LR. Rasters are read whole, up to "
               "{max_values:,} values (bands × width × height) each (about 3 GB of memory at that limit).").format(
                   max_values=evaluate.MAX_VALUES),
        ]

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add = self.add_parameter

        add(QgsProcessingParameterRasterLayer(self.INPUT, tr("Super-resolved raster (empty: degrade the reference)"),
                                              optional=True),
            tr("The SR raster to score, on the reference's pixel grid. Leave it empty to degrade the reference by "
               "SCALE, super-resolve it with METHOD and score that against bicubic."))
        add(QgsProcessingParameterRasterLayer(self.REFERENCE, tr("Reference (high-resolution) raster")),
            tr("The ground truth at the SR's resolution."))
        add(QgsProcessingParameterRasterLayer(self.LR, tr("Low-resolution raster"), optional=True),
            tr("The LR the SR was made from, for the consistency PSNR. Empty: the reference degraded by SCALE. "
               "Only used with an SR raster."))
        add(QgsProcessingParameterNumber(self.SCALE, tr("Scale factor"), QgsProcessingParameterNumber.Double, None,
                                         optional=True, minValue=1.0, maxValue=pipeline.MAX_SCALE),
            tr("The SR's scale (1 < scale ≤ 8): sets the border crop, ERGAS and the degraded LR. Needed without an SR "
               "raster; with an LR raster it defaults to the size ratio."))
        add(QgsProcessingParameterBand(self.BANDS, tr("Bands"), None, self.REFERENCE, optional=True, allowMultiple=True),
            tr("Band numbers used in every raster (SR, reference and LR), matched in order. Empty means all bands."))
        add(QgsProcessingParameterEnum(self.METHOD, tr("Method (without an SR raster)"), [REGISTRY[m].label for m in METHODS],
                                       defaultValue=METHODS.index(DEFAULTS.method)),
            tr("The SR method run on the degraded reference when INPUT is empty; ignored otherwise."))
        add(QgsProcessingParameterNumber(self.STEPS, tr("Sampling steps (0 = method default)"),
                                         QgsProcessingParameterNumber.Integer, 0, minValue=0, maxValue=MAX_STEPS),
            tr("Steps of the diffusion methods when INPUT is empty: {steps_help}.").format(steps_help=steps_help()))
        add(QgsProcessingParameterNumber(self.DETAIL, tr("Detail (0 = faithful, 1 = detailed; empty = model default)"),
                                         QgsProcessingParameterNumber.Double, None, optional=True,
                                         minValue=DETAIL_RANGE[0], maxValue=DETAIL_RANGE[1]),
            tr("Detail of the diffusion methods when INPUT is empty. ") + DETAIL_HELP)
        add(QgsProcessingParameterNumber(self.SEED, tr("Random seed"), QgsProcessingParameterNumber.Integer, DEFAULTS.seed,
                                         minValue=0),
            tr("Seed of the diffusion methods when INPUT is empty."), advanced=True)
        add(QgsProcessingParameterEnum(self.BACKEND, tr("Backend"), list(BACKENDS), defaultValue=BACKENDS.index(DEFAULTS.backend)),
            tr("Backend of the learned methods when INPUT is empty (as in Super-resolve raster)."), advanced=True)
        add(QgsProcessingParameterEnum(self.DEVICE, tr("Device"), offered_devices(), defaultValue=DEVICES.index(DEFAULTS.device)),
            tr("Device of the learned methods when INPUT is empty; auto uses CUDA when available."), advanced=True)
        add(QgsProcessingParameterEnum(self.PRECISION, tr("Arithmetic"), list(PRECISIONS), defaultValue=0, optional=True),
            tr("Arithmetic of the learned methods: auto takes the fastest path that stays within the measured quality "
               "limits on this machine (docs/BENCHMARKS.md), float32 the exact one, bf16 runs PyTorch in bfloat16."),
            advanced=True)
        add(QgsProcessingParameterFile(self.MODEL, tr("Model folder (empty: the bundled model)"),
                                       behavior=QgsProcessingParameterFile.Folder, optional=True),
            tr("A model bundle folder for the learned methods when INPUT is empty."), advanced=True)
        add(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, tr("Evaluation report"), "HTML files (*.html)"),
            tr("The HTML report: the metrics per band and overall (the method and bicubic side by side without an SR raster)."))
        add(QgsProcessingParameterRasterDestination(self.OUTPUT_DIFFERENCE, tr("Difference (SR − reference)"),
                                                    optional=True, createByDefault=False),
            tr("SR − reference as Float32 on the SR's grid (without an SR raster: the method's result on the cropped "
               "reference's grid), NaN where either raster has no data."))
        add(QgsProcessingParameterRasterDestination(self.OUTPUT_CORRECTNESS, tr("Correctness class"),
                                                    optional=True, createByDefault=False),
            tr("Per-pixel correctness class as a Byte raster on the SR's grid: 1 improvement, 2 omission, "
               "3 hallucination, 0 (nodata) not classified (flat pixels, the border and nodata). Needs the LR: "
               "a scale or an LR raster."))
        for name, _, description in numbers():
            self.addOutput(QgsProcessingOutputNumber(name, description))

    def layer_path(self, parameters, name, context):
        """The GDAL source of a raster layer parameter, or None when it is empty."""
        layer = self.gdal_layer(parameters, name, context)
        return None if layer is None else layer.source()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        reference = self.layer_path(parameters, self.REFERENCE, context)
        if reference is None:
            raise QgsProcessingException(tr("The reference raster could not be loaded."))
        has_scale = parameters.get(self.SCALE) not in (None, "")
        difference = self.parameterAsOutputLayer(parameters, self.OUTPUT_DIFFERENCE, context) or None
        correctness = self.parameterAsOutputLayer(parameters, self.OUTPUT_CORRECTNESS, context) or None
        request = evaluate.EvaluateRequest(
            reference=reference,
            sr=self.layer_path(parameters, self.INPUT, context),
            lr=self.layer_path(parameters, self.LR, context),
            scale=self.parameterAsDouble(parameters, self.SCALE, context) if has_scale else None,
            bands=self.parameterAsInts(parameters, self.BANDS, context) or None,
            options=self.run_options(parameters, context),
            html=self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context),
            difference=difference,
            correctness=correctness,
        )
        report = run_engine(tr("Evaluation"), evaluate.evaluate, request, feedback)
        for line in render_text(report).splitlines():
            feedback.pushInfo(line)
        results = {self.OUTPUT_HTML: report.html, self.OUTPUT_DIFFERENCE: difference, self.OUTPUT_CORRECTNESS: correctness}
        for name, key, _ in numbers():
            value = report.main.overall[key]
            results[name] = None if math.isnan(value) else value
        return results
