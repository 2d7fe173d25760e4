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
from .algorithm import LatentSRAlgorithm
from .engine_run import run_engine
from ..engine.methods import BACKENDS, DEFAULTS, DETAIL_HELP, DETAIL_RANGE, DEVICES, steps_help
from ..engine.registry import MAX_STEPS, METHODS, REGISTRY
from .superresolve import offered_devices

NUMBERS = (("PSNR", "psnr", "PSNR (dB)"), ("SSIM", "ssim", "SSIM"), ("ERGAS", "ergas", "ERGAS"),
           ("SAM", "sam", "SAM (degrees)"), ("CONSISTENCY_PSNR", "consistency_psnr", "Consistency PSNR (dB)"),
           ("HF_RATIO", "hf_ratio", "High-frequency energy ratio"), ("LSD", "lsd", "Log-spectral distance (dB)"),
           ("LATTICE", "lattice", "Lattice figure of the added detail (dB)"),
           ("LATTICE_HR", "lattice_hr", "Lattice figure of the reference (dB)"),
           ("IMPROVEMENT", "improvement", "Improvement share"), ("OMISSION", "omission", "Omission share"),
           ("HALLUCINATION", "hallucination", "Hallucination share"))


class EvaluateAlgorithm(LatentSRAlgorithm):
    INPUT, REFERENCE, LR, SCALE, BANDS = "INPUT", "REFERENCE", "LR", "SCALE", "BANDS"
    METHOD, STEPS, SEED, BACKEND, DEVICE, MODEL = "METHOD", "STEPS", "SEED", "BACKEND", "DEVICE", "MODEL"
    DETAIL = "DETAIL"
    OUTPUT_HTML, OUTPUT_DIFFERENCE, OUTPUT_CORRECTNESS = "OUTPUT_HTML", "OUTPUT_DIFFERENCE", "OUTPUT_CORRECTNESS"

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802 - QGIS API
        return "Evaluate super-resolution"

    def help_paragraphs(self):
        return [
            "Scores super-resolution against a reference high-resolution raster: PSNR, SSIM, ERGAS, SAM, the "
            "consistency PSNR (downsample(SR) against the LR), the high-frequency energy ratio and the log-spectral "
            "distance (LSD), per band and overall, and the correctness shares (improvement, omission, hallucination: "
            "ESA opensr-test's definitions with the L1 distance), in an HTML report, with an optional SR − HR "
            "difference raster and an optional raster of the per-pixel correctness class.",
            ("With an SR raster", "(INPUT set): it is compared with the reference on the same pixel grid. The "
             "consistency PSNR uses the LR raster, or the reference degraded by SCALE when there is no LR; with "
             "neither it is not available."),
            ("Without an SR raster", "(INPUT empty): the reference is degraded by SCALE (antialiased bicubic, "
             "the training degradation), super-resolved with METHOD, and scored with bicubic beside it."),
            "PSNR and SSIM use a data range of 255 for Byte rasters, else the reference's valid max − min. A border "
            "of ceil(scale) pixels is left out. Nodata pixels of either raster are left out of PSNR, ERGAS and SAM; "
            "SSIM and the HF ratio see them as equal in both rasters. The lattice figure (dB) is the power of what "
            "the result adds to a baseline at the LR pixel frequency (1/scale cycles per pixel) and its harmonics, "
            "against the neighbouring frequencies, beside the reference's own (0 dB: no peak; above the reference's: "
            "detail locked to the LR pixels); the baseline is the model's regression when METHOD is a diffusion method "
            "and INPUT is empty, else the bicubic of the LR. Rasters are read whole, up to "
            f"{evaluate.MAX_VALUES:,} values (bands × width × height) each (about 3 GB of memory at that limit).",
        ]

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add = self.add_parameter

        add(QgsProcessingParameterRasterLayer(self.INPUT, "Super-resolved raster (empty: degrade the reference)",
                                              optional=True),
            "The SR raster to score, on the reference's pixel grid. Leave it empty to degrade the reference by "
            "SCALE, super-resolve it with METHOD and score that against bicubic.")
        add(QgsProcessingParameterRasterLayer(self.REFERENCE, "Reference (high-resolution) raster"),
            "The ground truth at the SR's resolution.")
        add(QgsProcessingParameterRasterLayer(self.LR, "Low-resolution raster", optional=True),
            "The LR the SR was made from, for the consistency PSNR. Empty: the reference degraded by SCALE. "
            "Only used with an SR raster.")
        add(QgsProcessingParameterNumber(self.SCALE, "Scale factor", QgsProcessingParameterNumber.Double, None,
                                         optional=True, minValue=1.0, maxValue=pipeline.MAX_SCALE),
            "The SR's scale (1 < scale ≤ 8): sets the border crop, ERGAS and the degraded LR. Needed without an SR "
            "raster; with an LR raster it defaults to the size ratio.")
        add(QgsProcessingParameterBand(self.BANDS, "Bands", None, self.REFERENCE, optional=True, allowMultiple=True),
            "Band numbers used in every raster (SR, reference and LR), matched in order. Empty means all bands.")
        add(QgsProcessingParameterEnum(self.METHOD, "Method (without an SR raster)", [REGISTRY[m].label for m in METHODS],
                                       defaultValue=METHODS.index(DEFAULTS.method)),
            "The SR method run on the degraded reference when INPUT is empty; ignored otherwise.")
        add(QgsProcessingParameterNumber(self.STEPS, "Sampling steps (0 = method default)",
                                         QgsProcessingParameterNumber.Integer, 0, minValue=0, maxValue=MAX_STEPS),
            f"Steps of the diffusion methods when INPUT is empty: {steps_help()}.")
        add(QgsProcessingParameterNumber(self.DETAIL, "Detail (0 = faithful, 1 = detailed; empty = model default)",
                                         QgsProcessingParameterNumber.Double, None, optional=True,
                                         minValue=DETAIL_RANGE[0], maxValue=DETAIL_RANGE[1]),
            "Detail of the diffusion methods when INPUT is empty. " + DETAIL_HELP)
        add(QgsProcessingParameterNumber(self.SEED, "Random seed", QgsProcessingParameterNumber.Integer, DEFAULTS.seed,
                                         minValue=0),
            "Seed of the diffusion methods when INPUT is empty.", advanced=True)
        add(QgsProcessingParameterEnum(self.BACKEND, "Backend", list(BACKENDS), defaultValue=BACKENDS.index(DEFAULTS.backend)),
            "Backend of the learned methods when INPUT is empty (as in Super-resolve raster).", advanced=True)
        add(QgsProcessingParameterEnum(self.DEVICE, "Device", offered_devices(), defaultValue=DEVICES.index(DEFAULTS.device)),
            "Device of the learned methods when INPUT is empty; auto uses CUDA when available.", advanced=True)
        add(QgsProcessingParameterFile(self.MODEL, "Model folder (empty: the bundled model)",
                                       behavior=QgsProcessingParameterFile.Folder, optional=True),
            "A model bundle folder for the learned methods when INPUT is empty.", advanced=True)
        add(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, "Evaluation report", "HTML files (*.html)"),
            "The HTML report: the metrics per band and overall (the method and bicubic side by side without an SR raster).")
        add(QgsProcessingParameterRasterDestination(self.OUTPUT_DIFFERENCE, "Difference (SR − reference)",
                                                    optional=True, createByDefault=False),
            "SR − reference as Float32 on the SR's grid (without an SR raster: the method's result on the cropped "
            "reference's grid), NaN where either raster has no data.")
        add(QgsProcessingParameterRasterDestination(self.OUTPUT_CORRECTNESS, "Correctness class",
                                                    optional=True, createByDefault=False),
            "Per-pixel correctness class as a Byte raster on the SR's grid: 1 improvement, 2 omission, "
            "3 hallucination, 0 (nodata) not classified (flat pixels, the border and nodata). Needs the LR: "
            "a scale or an LR raster.")
        for name, _, description in NUMBERS:
            self.addOutput(QgsProcessingOutputNumber(name, f"Overall {description}"))

    def layer_path(self, parameters, name, context):
        """The GDAL source of a raster layer parameter, or None when it is empty."""
        layer = self.gdal_layer(parameters, name, context)
        return None if layer is None else layer.source()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        reference = self.layer_path(parameters, self.REFERENCE, context)
        if reference is None:
            raise QgsProcessingException("The reference raster could not be loaded.")
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
        report = run_engine("Evaluation", evaluate.evaluate, request, feedback)
        for line in evaluate.render_text(report).splitlines():
            feedback.pushInfo(line)
        results = {self.OUTPUT_HTML: report.html, self.OUTPUT_DIFFERENCE: difference, self.OUTPUT_CORRECTNESS: correctness}
        for name, key, _ in NUMBERS:
            value = report.main.overall[key]
            results[name] = None if math.isnan(value) else value
        return results
