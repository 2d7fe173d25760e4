"""Processing algorithm ``latentsr:train``: fine-tunes a model on the user's raster layers with the
code of ``python -m training finetune`` (training.finetune.run), and offers the result in the dock.

The training code imports the engine as the top-level package ``engine`` (as the CLI does), so the
plugin folder goes on sys.path while it runs; nothing of it is imported before the algorithm runs."""
from __future__ import annotations

import logging
import os
import re
import sys
import time

from qgis.core import (
    QgsApplication,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ..engine import raster
from ..engine.methods import cuda_offered
from ..engine.pipeline import MAX_SCALE
from ..engine.registry import STOCHASTIC
from .algorithm import LatentSRAlgorithm
from .engine_run import FeedbackHandler
from .user_models import register
from .i18n import tr

PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = ("cpu", "cuda")
REPORT_EVERY = 10  # steps between the loss lines in the log
NAME_CHARS = 60  # a default model folder's name is cut to this length
def option_names() -> dict:
    """The training CLI's options in its messages, as this dialog names them."""
    return {"--crop": tr("Window size (CROP)"), "--batch": tr("Batch size (BATCH)"), "--device": tr("Device (DEVICE)"),
            "--steps": tr("Training steps (STEPS)"), "--stage2-steps": tr("Stage-2 steps (STAGE2_STEPS)"),
            "--bands": tr("Bands (BANDS)"), "--init": tr("Start model folder (INIT_MODEL)"),
            "--out": tr("Output model folder (OUTPUT_MODEL)"), "--val": tr("Validation raster (VALIDATION)")}


def references() -> dict:
    """What each stage's validation compares the model with (training's Stage.reference)."""
    return {"stage1": tr("the decoder without the latent"), **dict.fromkeys(STOCHASTIC, tr("the faithful result (Detail 0)"))}


def models_folder() -> str:
    """Where trained models go by default: the QGIS profile's latentsr/models (it outlives QGIS's
    temporary processing folder, so the model stays and its training can be resumed)."""
    return os.path.join(QgsApplication.qgisSettingsDirPath(), "latentsr", "models")


def default_model_name(names: list[str]) -> str:
    """A folder name made of the training layers' names: the same inputs give the same folder (so a
    run again resumes)."""
    text = "+".join(names[:3]) + (f"+{len(names) - 3} more" if len(names) > 3 else "")
    text = re.sub(r"[^\w.+-]+", "_", text).strip("._") or "model"
    return text[:NAME_CHARS]


def output_folder(value, resolved: str, names: list[str]) -> str:
    """The model folder of OUTPUT_MODEL: the folder given; a folder named after the inputs inside
    models_folder() when it is left temporary, lies in QGIS's temporary processing folder, or is
    models_folder() itself."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink.staticValue()
    temporary = value in (None, "", QgsProcessing.TEMPORARY_OUTPUT) or not resolved
    inside_temp = bool(resolved) and os.path.abspath(resolved).startswith(
        os.path.abspath(QgsProcessingUtils.tempFolder()) + os.sep)
    if temporary or inside_temp or os.path.abspath(resolved) == os.path.abspath(models_folder()):
        return os.path.join(models_folder(), default_model_name(names))
    return resolved


def dialog_words(message: str) -> str:
    """A training error in the dialog's terms: its parameters instead of the CLI's options."""
    for option, name in option_names().items():
        message = re.sub(re.escape(option) + r"(?![\w-])", name, message)
    return message


def parse_bands(text: str) -> list[int] | None:
    """BANDS by the engine's parser (engine.raster.parse_bands); None when empty (all bands)."""
    try:
        return raster.parse_bands(text)
    except ValueError as exc:
        raise QgsProcessingException(tr("BANDS: {exc}").format(exc=exc)) from None


def training_modules():
    """training.finetune, training.errors and engine.errors as the CLI imports them."""
    if PLUGIN_ROOT not in sys.path:
        sys.path.append(PLUGIN_ROOT)
    try:
        from engine import errors as engine_errors
        from training import errors, finetune
    except ImportError as exc:
        raise QgsProcessingException(tr("Training needs PyTorch, onnx, safetensors and tqdm in QGIS's Python "
                                        "({exc}); install them with pip (see requirements.txt)").format(
                                            exc=exc)) from None
    return finetune, errors, engine_errors


class TrainingLog(FeedbackHandler):
    """The training log in the Processing log, less the trainer's validation lines: report() gives
    them in this dialog's words."""

    def emit(self, record):
        if record.name.endswith("trainer") and str(record.msg).startswith("step %d: validation"):
            return
        super().emit(record)


class TrainAlgorithm(LatentSRAlgorithm):
    INPUT, BANDS, INIT_MODEL, STEPS = "INPUT", "BANDS", "INIT_MODEL", "STEPS"
    SCALE_MIN, SCALE_MAX, VALIDATION, OUTPUT_MODEL = "SCALE_MIN", "SCALE_MAX", "VALIDATION", "OUTPUT_MODEL"
    STAGE2_STEPS, DEVICE, BATCH, CROP = "STAGE2_STEPS", "DEVICE", "BATCH", "CROP"

    def name(self):
        return "train"

    def displayName(self):  # noqa: N802 - QGIS API
        return tr("Train (fine-tune) a model on your rasters")

    def flags(self):
        # the fine-tune holds the CPU for minutes to hours: in the background, and cancelable
        return super().flags() | self.FlagCanCancel

    def help_paragraphs(self):
        return [
            tr("Fine-tunes a LatentSR model on your own raster layers (any band count and data type) and writes a new "
               "model folder, which the dock then offers in its model list. It runs the same code as "
               "python -m training finetune: stage 1 (the residual autoencoder), then stage 2 of every diffusion "
               "method of the start model, then the bundle and its ONNX graphs."),
            (tr("Data."), tr("Random windows that hold at most 2% nodata pixels (no nodata pixel enters the loss), normalised "
                "exactly as super-resolution normalises the raster (whole-raster statistics per band, recorded in the "
                "model card).")),
            (tr("Cancel and resume."), tr("Cancel saves a checkpoint; running again with the same OUTPUT_MODEL resumes it.")),
            (tr("Where the model goes."), tr("By default into a folder named after the training rasters inside your QGIS "
                "profile's latentsr/models folder, which stays after QGIS quits: the same rasters again resume or "
                "reuse it.")),
        ]

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add = self.add_parameter
        add(QgsProcessingParameterMultipleLayers(self.INPUT, tr("Training rasters"), QgsProcessing.TypeRaster),
            tr("One or more raster layers to train on (GDAL rasters; nodata is honoured). They must have the same band "
               "count, or BANDS must pick the same bands of each."))
        add(QgsProcessingParameterString(self.BANDS, tr("Bands (e.g. 1,2,3,4; empty: all)"), optional=True),
            tr("The bands to train on, in order, as band numbers separated by commas. The model gets this many bands; "
               "bands beyond the start model's begin from the mean of its band filters."))
        add(QgsProcessingParameterFile(self.INIT_MODEL, tr("Start model folder (empty: the bundled model)"),
                                       behavior=QgsProcessingParameterFile.Folder, optional=True),
            tr("The model bundle to start from (model.json + model.safetensors); empty: the bundled model."))
        add(QgsProcessingParameterNumber(self.STEPS, tr("Training steps (stage 1)"), QgsProcessingParameterNumber.Integer,
                                         600, minValue=1),
            tr("Steps of stage 1; each stage-2 method trains half as many unless STAGE2_STEPS says otherwise. How long a "
               "step takes depends on the computer, the batch size and the window size: the log gives the time per step "
               "and an estimate of the time left."))
        add(QgsProcessingParameterNumber(self.SCALE_MIN, tr("Smallest training scale"), QgsProcessingParameterNumber.Double,
                                         1.0, minValue=1.0, maxValue=MAX_SCALE),
            tr("Each step trains at a random scale between SCALE_MIN and SCALE_MAX; narrow it to the scales you will use."))
        add(QgsProcessingParameterNumber(self.SCALE_MAX, tr("Largest training scale"), QgsProcessingParameterNumber.Double,
                                         MAX_SCALE, minValue=1.0, maxValue=MAX_SCALE),
            tr("The largest scale of the training steps (at most {max_scale:g}), not below SCALE_MIN.").format(
                max_scale=MAX_SCALE))
        add(QgsProcessingParameterRasterLayer(self.VALIDATION, tr("Validation raster"), optional=True),
            tr("A raster the validation PSNR is measured on; empty: the last 15% of the rows of every training raster are "
               "held back for it and no training window reaches them."))
        add(QgsProcessingParameterNumber(self.STAGE2_STEPS, tr("Stage-2 steps (0: half the steps)"),
                                         QgsProcessingParameterNumber.Integer, 0, minValue=0),
            tr("Steps of each stage-2 method (E²DiffSR, LCMSR); 0 means half of STEPS."), advanced=True)
        add(QgsProcessingParameterEnum(self.DEVICE, tr("Device"), [d for d in DEVICES if d != "cuda" or cuda_offered(("torch",))],
                                       defaultValue=0),
            tr("cpu, or cuda for a CUDA GPU that PyTorch sees (listed only where an NVIDIA driver and a CUDA build of "
               "PyTorch are installed)."), advanced=True)
        add(QgsProcessingParameterNumber(self.BATCH, tr("Batch size"), QgsProcessingParameterNumber.Integer, 8, minValue=1),
            tr("Windows per step."), advanced=True)
        add(QgsProcessingParameterNumber(self.CROP, tr("Window size (pixels)"), QgsProcessingParameterNumber.Integer, 96,
                                         minValue=32, maxValue=1024),
            tr("The side of the training windows, a multiple of 32."), advanced=True)
        add(QgsProcessingParameterFolderDestination(self.OUTPUT_MODEL, tr("Output model folder"), models_folder()),
            tr("The new model's folder. Its training runs go to its training/ subfolder; running again with the same "
               "folder resumes an interrupted or cancelled training. By default (this profile's latentsr/models, or a "
               "temporary folder) a folder named after the training rasters inside latentsr/models of the QGIS "
               "profile: it stays after QGIS quits."))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not layers:
            raise QgsProcessingException(tr("Give at least one training raster."))
        for layer in layers:
            if layer.providerType() != "gdal":
                raise QgsProcessingException(tr("Only GDAL rasters are supported, not '{provider}' layers.").format(
                    provider=layer.providerType()))
        validation = self.gdal_layer(parameters, self.VALIDATION, context)
        out = output_folder(parameters.get(self.OUTPUT_MODEL),
                            self.parameterAsString(parameters, self.OUTPUT_MODEL, context), [lyr.name() for lyr in layers])
        scale_min = self.parameterAsDouble(parameters, self.SCALE_MIN, context)
        scale_max = self.parameterAsDouble(parameters, self.SCALE_MAX, context)
        if scale_min > scale_max:
            raise QgsProcessingException(tr("Smallest training scale (SCALE_MIN, {scale_min:g}) is above the largest "
                                            "(SCALE_MAX, {scale_max:g}): it must not be.").format(
                                                scale_min=scale_min, scale_max=scale_max))
        feedback.pushInfo(tr("The model goes to {out}").format(out=out))
        finetune, errors, engine_errors = training_modules()
        job = finetune.Finetune(
            rasters=[layer.source() for layer in layers], out=out,
            bands=parse_bands(self.parameterAsString(parameters, self.BANDS, context)),
            init=self.parameterAsFile(parameters, self.INIT_MODEL, context) or None,
            steps=self.parameterAsInt(parameters, self.STEPS, context),
            stage2_steps=self.parameterAsInt(parameters, self.STAGE2_STEPS, context) or None,
            scale_min=scale_min, scale_max=scale_max,
            val=[validation.source()] if validation is not None else None,
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            batch=self.parameterAsInt(parameters, self.BATCH, context),
            crop=self.parameterAsInt(parameters, self.CROP, context), progress=False)

        pace = {}  # stage: (monotonic time, step) of its first report in this run

        def report(stage, k, stages, step, steps, loss, val):
            feedback.setProgress(100.0 * (k + step / steps) / stages)
            first = pace.setdefault(stage, (time.monotonic(), step))
            if step % REPORT_EVERY == 0 or step == steps:
                text = tr("{stage} step {step}/{steps}: loss {loss:.4g}").format(
                    stage=stage, step=step, steps=steps, loss=loss)
                if step > first[1]:
                    per_step = (time.monotonic() - first[0]) / (step - first[1])
                    text += tr(", {per_step:.2g} s per step, about {minutes:.0f} min left in this stage").format(
                        per_step=per_step, minutes=per_step * (steps - step) / 60)
                if val:
                    text += tr("; validation PSNR: this model {model:.2f} dB, bicubic {bicubic:.2f} dB").format(
                        model=val[0], bicubic=val[1])
                    if len(val) > 2:
                        text += tr(", {reference} {psnr:.2f} dB").format(
                            reference=references().get(stage, tr("the reference")), psnr=val[2])
                feedback.pushInfo(text)

        handler = TrainingLog(feedback)
        logger = logging.getLogger(finetune.__name__.rsplit(".", 1)[0])
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            folder = finetune.run(job, report=report, should_stop=feedback.isCanceled)
        except errors.Interrupted as exc:
            raise QgsProcessingException(tr("Cancelled at {step} steps of the running stage: the checkpoint is "
                                            "saved; run again with the same output model folder to resume.").format(
                                                step=exc.step)) from None
        except (errors.TrainingError, engine_errors.LatentSRError) as exc:
            raise QgsProcessingException(dialog_words(str(exc).strip().splitlines()[0])) from None
        finally:
            logger.removeHandler(handler)
        register(str(folder))
        feedback.pushInfo(tr("Wrote the model {folder}; the LatentSR dock now offers it in its model list.").format(
            folder=folder))
        return {self.OUTPUT_MODEL: str(folder)}
