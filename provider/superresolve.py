"""Processing algorithm ``latentsr:superresolve``: a thin mapping of parameters onto the engine."""
from __future__ import annotations


from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..engine import cluster, pipeline
from ..engine.errors import LatentSRError
from ..engine.methods import (BACKENDS, DEFAULTS, DETAIL_HELP, DETAIL_RANGE, DEVICES, MAX_SAMPLES, cuda_offered,
                              steps_help)
from ..engine.registry import MAX_STEPS, METHODS, REGISTRY
from .algorithm import LatentSRAlgorithm
from .engine_run import run_engine


def offered_devices() -> list[str]:
    """The DEVICE choices: cuda only where it may run (engine.methods.cuda_offered); the indices stay DEVICES'."""
    return list(DEVICES) if cuda_offered() else [d for d in DEVICES if d != "cuda"]


def check_cluster(address: str, feedback) -> None:
    """CLUSTER refused in one line when engine.cluster cannot parse it (local:N, or a scheduler address with
    its port); for a scheduler, say that the run waits for it (up to Dask's connect timeout) before the tiles start."""
    try:
        target, workers = cluster.parse_address(address)
    except LatentSRError as exc:
        raise QgsProcessingException(f"CLUSTER: {exc}") from None
    if workers is not None:
        feedback.pushInfo(f"Starting {workers} local Dask worker process{'es' * (workers > 1)}…")
        return
    feedback.pushInfo(f"Connecting to the Dask scheduler at {target} (waiting up to {connect_timeout()})…")


def connect_timeout() -> str:
    """Dask's connect timeout in words ("30 s", engine.cluster.connect_timeout), or "Dask's connect
    timeout" when Dask is not importable."""
    try:
        return f"{cluster.connect_timeout():g} s"
    except (LatentSRError, KeyError, ValueError, TypeError):
        return "Dask's connect timeout"


class SuperResolveAlgorithm(LatentSRAlgorithm):
    INPUT, BANDS, SCALE, TARGET_RESOLUTION = "INPUT", "BANDS", "SCALE", "TARGET_RESOLUTION"
    METHOD, STEPS, DETAIL, BACKEND, DEVICE = "METHOD", "STEPS", "DETAIL", "BACKEND", "DEVICE"
    TILE_SIZE, OVERLAP, SEED, SAMPLES = "TILE_SIZE", "OVERLAP", "SEED", "SAMPLES"
    CONSISTENCY, EXTENT, COG, MODEL, CLUSTER = "CONSISTENCY", "EXTENT", "COG", "MODEL", "CLUSTER"
    OUTPUT, OUTPUT_UNCERTAINTY = "OUTPUT", "OUTPUT_UNCERTAINTY"

    def name(self):
        return "superresolve"

    def displayName(self):  # noqa: N802 - QGIS API
        return "Super-resolve raster"

    def help_paragraphs(self):
        return [
            "Super-resolves a raster at a continuous scale (1 < scale ≤ 8) and writes a tiled, compressed GeoTIFF.",
            ("Output grid.", "With SCALE the output covers exactly the input's extent with round(size × scale) "
             "pixels. With TARGET_RESOLUTION R the pixels are exactly R × R: the origin is kept and the extent "
             "grows by less than one output pixel to a whole number of pixels. With EXTENT the output is the part "
             "of the whole raster's output grid that covers it, so it lines up pixel for pixel with a full run."),
            "The output keeps the CRS, nodata, band descriptions and data type. Nodata pixels stay nodata and do "
            "not smear into valid ones.",
            ("Methods:", ", ".join(REGISTRY[m].label for m in METHODS) + f"; the default is {REGISTRY[DEFAULTS.method].short}."),
        ]

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add = self.add_parameter

        add(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"),
            "Any GDAL-readable raster layer (GeoTIFF, PNG, JPEG, VRT...).")
        add(QgsProcessingParameterBand(self.BANDS, "Bands", None, self.INPUT, optional=True, allowMultiple=True),
            "Bands to super-resolve, in output order. Empty means all bands.")
        add(QgsProcessingParameterNumber(self.SCALE, "Scale factor", QgsProcessingParameterNumber.Double, 2.0,
                                         minValue=1.0, maxValue=pipeline.MAX_SCALE),
            "Continuous scale, greater than 1 and at most 8 (for example 2.5). Ignored when a target resolution is given.")
        add(QgsProcessingParameterNumber(self.TARGET_RESOLUTION, "Target resolution (map units)",
                                         QgsProcessingParameterNumber.Double, None, optional=True, minValue=0.0),
            "Output pixel size in the layer's map units; when set, it decides the scale.")
        add(QgsProcessingParameterEnum(self.METHOD, "Method", [REGISTRY[m].label for m in METHODS],
                                       defaultValue=METHODS.index(DEFAULTS.method)),
            "LCMSR samples in one step; E²DiffSR runs a few diffusion steps; Regression is deterministic; Bicubic is the classic baseline.")
        add(QgsProcessingParameterNumber(self.STEPS, "Sampling steps (0 = method default)",
                                         QgsProcessingParameterNumber.Integer, 0, minValue=0, maxValue=MAX_STEPS),
            f"Steps of the diffusion methods, at most {MAX_STEPS}: {steps_help()}. Ignored by the others.")
        add(QgsProcessingParameterNumber(self.DETAIL, "Detail (0 = faithful, 1 = detailed; empty = model default)",
                                         QgsProcessingParameterNumber.Double, None, optional=True,
                                         minValue=DETAIL_RANGE[0], maxValue=DETAIL_RANGE[1]),
            DETAIL_HELP)
        add(QgsProcessingParameterEnum(self.BACKEND, "Backend", list(BACKENDS), defaultValue=BACKENDS.index(DEFAULTS.backend)),
            "auto: PyTorch on a CUDA GPU, else ONNX Runtime when the model has ONNX graphs (faster on CPU), else PyTorch.", advanced=True)
        add(QgsProcessingParameterEnum(self.DEVICE, "Device", offered_devices(), defaultValue=DEVICES.index(DEFAULTS.device)),
            "auto uses a CUDA GPU when available, else the CPU; cuda is listed only where an NVIDIA driver and a "
            "CUDA build of PyTorch or ONNX Runtime are installed.", advanced=True)
        add(QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (input pixels)", QgsProcessingParameterNumber.Integer,
                                         DEFAULTS.tile, minValue=pipeline.MIN_TILE),
            "The raster is processed in tiles of this many input pixels; smaller tiles use less memory.", advanced=True)
        add(QgsProcessingParameterNumber(self.OVERLAP, "Tile overlap (input pixels)", QgsProcessingParameterNumber.Integer,
                                         DEFAULTS.overlap, minValue=0),
            "Neighbouring tiles overlap by this many input pixels and are blended there, so no seams show.", advanced=True)
        add(QgsProcessingParameterNumber(self.SEED, "Random seed", QgsProcessingParameterNumber.Integer, DEFAULTS.seed,
                                         minValue=0),
            "The same seed gives the same result for the diffusion methods.", advanced=True)
        add(QgsProcessingParameterNumber(self.SAMPLES, "Samples", QgsProcessingParameterNumber.Integer, 1, minValue=1,
                                         maxValue=MAX_SAMPLES),
            "Number of diffusion samples; with more than one, the output is their mean and the uncertainty their standard deviation.")
        add(QgsProcessingParameterBoolean(self.CONSISTENCY, "Radiometric consistency", False),
            "Project the result so that its bicubic downsampling gives back the input exactly: the SR adds detail "
            "but never changes the input's radiometry at its own resolution.")
        add(QgsProcessingParameterExtent(self.EXTENT, "Clip to extent", optional=True),
            "Only super-resolve the part of the raster inside this extent (for a quick preview).", advanced=True)
        add(QgsProcessingParameterFile(self.MODEL, "Model folder (empty: the bundled model)",
                                       behavior=QgsProcessingParameterFile.Folder, optional=True),
            "A model bundle folder (model.json + model.safetensors), for example one you trained with the Train "
            "algorithm; empty: the bundled model.", advanced=True)
        add(QgsProcessingParameterBoolean(self.COG, "Write a Cloud Optimized GeoTIFF", False),
            "Write the output as a COG (with overviews) instead of a tiled GeoTIFF.", advanced=True)
        add(QgsProcessingParameterString(self.CLUSTER, "Share the work out with Dask (empty: run here, in QGIS)",
                                         optional=True),
            "For large rasters: run the tiles in parallel on several processes or computers with Dask distributed. "
            "Write local:N to start N worker processes on this computer, or the address of a running Dask scheduler "
            "such as tcp://host:8786. Empty: QGIS runs every tile itself. The output is the same either way. Every "
            "worker must be able to read the input and the model, and to write next to the output. Needs Dask "
            "distributed (LatentSR → Install dependencies).", advanced=True)
        add(QgsProcessingParameterRasterDestination(self.OUTPUT, "Super-resolved raster"),
            "Output GeoTIFF.")
        add(QgsProcessingParameterRasterDestination(self.OUTPUT_UNCERTAINTY, "Uncertainty (std of samples)",
                                                    optional=True, createByDefault=False),
            "Per-pixel standard deviation of the samples (needs Samples ≥ 2).")

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layer = self.gdal_layer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("The input raster could not be loaded.")
        target = self.parameterAsDouble(parameters, self.TARGET_RESOLUTION, context)
        has_target = parameters.get(self.TARGET_RESOLUTION) not in (None, "") and target > 0
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        uncertainty = self.parameterAsOutputLayer(parameters, self.OUTPUT_UNCERTAINTY, context) or None
        request = pipeline.Request(
            input=layer.source(),
            output=self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            options=self.run_options(parameters, context),
            scale=self.parameterAsDouble(parameters, self.SCALE, context),
            target_resolution=target if has_target else None,
            bands=self.parameterAsInts(parameters, self.BANDS, context) or None,
            tile=self.parameterAsInt(parameters, self.TILE_SIZE, context),
            overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
            uncertainty=uncertainty,
            cog=self.parameterAsBool(parameters, self.COG, context),
            extent=extent,
            cluster=self.parameterAsString(parameters, self.CLUSTER, context).strip() or None,
        )
        if request.cluster:
            check_cluster(request.cluster, feedback)
        result = run_engine("Super-resolution", pipeline.superresolve, request, feedback)
        feedback.pushInfo(f"Wrote {result.width}×{result.height} pixels (scale {result.scale:.4g}, {result.method}) "
                          f"in {result.seconds:.1f} s.")
        return {self.OUTPUT: result.output, self.OUTPUT_UNCERTAINTY: uncertainty}
