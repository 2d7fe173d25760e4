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
from ..engine.precision import PRECISIONS
from .i18n import tr


def offered_devices() -> list[str]:
    """The DEVICE choices: cuda only where it may run (engine.methods.cuda_offered); the indices stay DEVICES'."""
    return list(DEVICES) if cuda_offered() else [d for d in DEVICES if d != "cuda"]


def check_cluster(address: str, feedback) -> None:
    """CLUSTER refused in one line when engine.cluster cannot parse it (local:N, or a scheduler address with
    its port); for a scheduler, say that the run waits for it (up to Dask's connect timeout) before the tiles start."""
    try:
        target, workers = cluster.parse_address(address)
    except LatentSRError as exc:
        raise QgsProcessingException(tr("CLUSTER: {exc}").format(exc=exc)) from None
    if workers is not None:
        feedback.pushInfo((tr("Starting {workers} local Dask worker processes…") if workers > 1 else
                           tr("Starting {workers} local Dask worker process…")).format(workers=workers))
        return
    feedback.pushInfo(tr("Connecting to the Dask scheduler at {target} (waiting up to {connect_timeout})…").format(
        target=target, connect_timeout=connect_timeout()))


def connect_timeout() -> str:
    """Dask's connect timeout in words ("30 s", engine.cluster.connect_timeout), or "Dask's connect
    timeout" when Dask is not importable."""
    try:
        return tr("{seconds:g} s").format(seconds=cluster.connect_timeout())
    except (LatentSRError, KeyError, ValueError, TypeError):
        return tr("Dask's connect timeout")


class SuperResolveAlgorithm(LatentSRAlgorithm):
    INPUT, BANDS, SCALE, TARGET_RESOLUTION = "INPUT", "BANDS", "SCALE", "TARGET_RESOLUTION"
    METHOD, STEPS, DETAIL, BACKEND, DEVICE = "METHOD", "STEPS", "DETAIL", "BACKEND", "DEVICE"
    PRECISION = "PRECISION"
    TILE_SIZE, OVERLAP, SEED, SAMPLES = "TILE_SIZE", "OVERLAP", "SEED", "SAMPLES"
    CONSISTENCY, EXTENT, COG, MODEL, CLUSTER = "CONSISTENCY", "EXTENT", "COG", "MODEL", "CLUSTER"
    OUTPUT, OUTPUT_UNCERTAINTY = "OUTPUT", "OUTPUT_UNCERTAINTY"

    def name(self):
        return "superresolve"

    def displayName(self):  # noqa: N802 - QGIS API
        return tr("Super-resolve raster")

    def help_paragraphs(self):
        return [
            tr("Super-resolves a raster at a continuous scale (1 < scale ≤ 8) and writes a tiled, compressed GeoTIFF."),
            (tr("Output grid."), tr("With SCALE the output covers exactly the input's extent with round(size × scale) "
                "pixels. With TARGET_RESOLUTION R the pixels are exactly R × R: the origin is kept and the extent "
                "grows by less than one output pixel to a whole number of pixels. With EXTENT the output is the part "
                "of the whole raster's output grid that covers it, so it lines up pixel for pixel with a full run.")),
            tr("The output keeps the CRS, nodata, band descriptions and data type. Nodata pixels stay nodata and do "
               "not smear into valid ones."),
            (tr("Methods:"), ", ".join(REGISTRY[m].label for m in METHODS) + tr("; the default is {short}.").format(
                short=REGISTRY[DEFAULTS.method].short)),
        ]

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add = self.add_parameter

        add(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster")),
            tr("Any GDAL-readable raster layer (GeoTIFF, PNG, JPEG, VRT...)."))
        add(QgsProcessingParameterBand(self.BANDS, tr("Bands"), None, self.INPUT, optional=True, allowMultiple=True),
            tr("Bands to super-resolve, in output order. Empty means all bands."))
        add(QgsProcessingParameterNumber(self.SCALE, tr("Scale factor"), QgsProcessingParameterNumber.Double, 2.0,
                                         minValue=1.0, maxValue=pipeline.MAX_SCALE),
            tr("Continuous scale, greater than 1 and at most 8 (for example 2.5). Ignored when a target resolution is given."))
        add(QgsProcessingParameterNumber(self.TARGET_RESOLUTION, tr("Target resolution (map units)"),
                                         QgsProcessingParameterNumber.Double, None, optional=True, minValue=0.0),
            tr("Output pixel size in the layer's map units; when set, it decides the scale."))
        add(QgsProcessingParameterEnum(self.METHOD, tr("Method"), [REGISTRY[m].label for m in METHODS],
                                       defaultValue=METHODS.index(DEFAULTS.method)),
            tr("LCMSR samples in one step; E²DiffSR runs a few diffusion steps; Regression is deterministic; Bicubic is the classic baseline."))
        add(QgsProcessingParameterNumber(self.STEPS, tr("Sampling steps (0 = method default)"),
                                         QgsProcessingParameterNumber.Integer, 0, minValue=0, maxValue=MAX_STEPS),
            tr("Steps of the diffusion methods, at most {max_steps}: {steps_help}. Ignored by the others.").format(
                max_steps=MAX_STEPS, steps_help=steps_help()))
        add(QgsProcessingParameterNumber(self.DETAIL, tr("Detail (0 = faithful, 1 = detailed; empty = model default)"),
                                         QgsProcessingParameterNumber.Double, None, optional=True,
                                         minValue=DETAIL_RANGE[0], maxValue=DETAIL_RANGE[1]),
            DETAIL_HELP)
        add(QgsProcessingParameterEnum(self.BACKEND, tr("Backend"), list(BACKENDS), defaultValue=BACKENDS.index(DEFAULTS.backend)),
            tr("auto: PyTorch on a CUDA GPU, else ONNX Runtime when the model has ONNX graphs (faster on CPU), else PyTorch."), advanced=True)
        add(QgsProcessingParameterEnum(self.DEVICE, tr("Device"), offered_devices(), defaultValue=DEVICES.index(DEFAULTS.device)),
            tr("auto uses a CUDA GPU when available, else the CPU; cuda is listed only where an NVIDIA driver and a "
               "CUDA build of PyTorch or ONNX Runtime are installed."), advanced=True)
        add(QgsProcessingParameterEnum(self.PRECISION, tr("Arithmetic"), list(PRECISIONS), defaultValue=0, optional=True),
            tr("Arithmetic of the learned methods: auto takes the fastest path that stays within the measured quality "
               "limits on this machine (docs/BENCHMARKS.md), float32 the exact one, bf16 runs PyTorch in bfloat16."),
            advanced=True)
        add(QgsProcessingParameterNumber(self.TILE_SIZE, tr("Tile size (input pixels)"), QgsProcessingParameterNumber.Integer,
                                         DEFAULTS.tile, minValue=pipeline.MIN_TILE),
            tr("The raster is processed in tiles of this many input pixels; smaller tiles use less memory."), advanced=True)
        add(QgsProcessingParameterNumber(self.OVERLAP, tr("Tile overlap (input pixels)"), QgsProcessingParameterNumber.Integer,
                                         DEFAULTS.overlap, minValue=0),
            tr("Neighbouring tiles overlap by this many input pixels and are blended there, so no seams show."), advanced=True)
        add(QgsProcessingParameterNumber(self.SEED, tr("Random seed"), QgsProcessingParameterNumber.Integer, DEFAULTS.seed,
                                         minValue=0),
            tr("The same seed gives the same result for the diffusion methods."), advanced=True)
        add(QgsProcessingParameterNumber(self.SAMPLES, tr("Samples"), QgsProcessingParameterNumber.Integer, 1, minValue=1,
                                         maxValue=MAX_SAMPLES),
            tr("Number of diffusion samples; with more than one, the output is their mean and the uncertainty their standard deviation."))
        add(QgsProcessingParameterBoolean(self.CONSISTENCY, tr("Radiometric consistency"), False),
            tr("Project the result so that its bicubic downsampling gives back the input exactly: the SR adds detail "
               "but never changes the input's radiometry at its own resolution."))
        add(QgsProcessingParameterExtent(self.EXTENT, tr("Clip to extent"), optional=True),
            tr("Only super-resolve the part of the raster inside this extent (for a quick preview)."), advanced=True)
        add(QgsProcessingParameterFile(self.MODEL, tr("Model folder (empty: the bundled model)"),
                                       behavior=QgsProcessingParameterFile.Folder, optional=True),
            tr("A model bundle folder (model.json + model.safetensors), for example one you trained with the Train "
               "algorithm; empty: the bundled model."), advanced=True)
        add(QgsProcessingParameterBoolean(self.COG, tr("Write a Cloud Optimized GeoTIFF"), False),
            tr("Write the output as a COG (with overviews) instead of a tiled GeoTIFF."), advanced=True)
        add(QgsProcessingParameterString(self.CLUSTER, tr("Share the work out with Dask (empty: run here, in QGIS)"),
                                         optional=True),
            tr("For large rasters: run the tiles in parallel on several processes or computers with Dask distributed. "
               "Write local:N to start N worker processes on this computer, or the address of a running Dask scheduler "
               "such as tcp://host:8786. Empty: QGIS runs every tile itself. The output is the same either way. Every "
               "worker must be able to read the input and the model, and to write next to the output. Needs Dask "
               "distributed (LatentSR → Install dependencies)."), advanced=True)
        add(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Super-resolved raster")),
            tr("Output GeoTIFF."))
        add(QgsProcessingParameterRasterDestination(self.OUTPUT_UNCERTAINTY, tr("Uncertainty (std of samples)"),
                                                    optional=True, createByDefault=False),
            tr("Per-pixel standard deviation of the samples (needs Samples ≥ 2)."))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layer = self.gdal_layer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(tr("The input raster could not be loaded."))
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
        result = run_engine(tr("Super-resolution"), pipeline.superresolve, request, feedback)
        feedback.pushInfo(tr("Wrote {width}×{height} pixels (scale {scale:.4g}, {method}) in {seconds:.1f} s.").format(
            width=result.width, height=result.height, scale=result.scale, method=result.method, seconds=result.seconds))
        return {self.OUTPUT: result.output, self.OUTPUT_UNCERTAINTY: uncertainty}
