"""Fine-tuning a bundle on the user's rasters: python -m training finetune, and latentsr:train.

It runs the stages `make train` chains, on rasters (training.rasters) instead of image folders,
each in its own run folder under OUT/training/, and writes a complete bundle into OUT (weights,
card, the stage-1 encoder, ONNX graphs):

1. stage 1 from the start bundle: with the encoder it ships, the encoder and the whole decoder start
   from it; without one, the encoder starts as the PCA of the residual and the decoder as the
   bundle's regression (training.stage1);
2. stage 2 of every method the bundle has, its networks started from the bundle's;
3. the bundle and its ONNX graphs.

Every network starts from the bundle's configuration (its card, not a preset), with the rasters'
band count (training.bands). Running it again resumes: finished stages are kept, an interrupted one
continues from its checkpoint, and a stage 2 whose stage 1 has moved on starts again.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine import modelfile
from engine.errors import LatentSRError
from engine.models import PRESETS, preset

from . import bands as band_start
from . import bundle, distributed
from .errors import TrainingError
from .trainer import STATE, Settings, Trainer

log = logging.getLogger(__name__)

RUNS = "training"  # OUT/training/<stage>: the run folders
VAL_EVERY = 50  # at least this many steps between validations (and at the end of each stage)
METHODS = ("e2diffsr", "lcmsr")
STAGE1_OPTIONS = {"kl_weight": 1e-4, "fft_weight": 0.05, "latent_noise": 0.1, "latent_dropout": 0.25,
                  "gan_weight": 0.0, "gan_start": 0}


@dataclass
class Finetune:
    rasters: list
    out: str
    bands: list | None = None  # 1-based raster bands (None: all)
    init: str | None = None  # the start bundle (None: the default model)
    steps: int = 600  # stage-1 steps
    stage2_steps: int | None = None  # steps of each stage-2 method (None: steps / 2)
    scale_min: float = 1.0
    scale_max: float = 8.0
    val: list | None = None  # validation rasters (None: held-back rows of the training rasters)
    device: str = "cpu"
    batch: int = 8
    crop: int = 96
    lr: float = 2e-4
    seed: int = 0
    workers: int = 0
    val_images: int = 16
    val_crop: int = 128
    name: str | None = None
    progress: bool = True


def encoder_preset(decoder_config: dict) -> str:
    """The preset whose decoder has this configuration (sizes only), else "default"."""
    sizes = {k: v for k, v in decoder_config.items() if k not in ("bands", "latent", "detail")}
    for name, kinds in PRESETS.items():
        if {k: v for k, v in kinds["decoder"].items() if k != "detail"} == sizes:
            return name
    return "default"


def with_bands(spec: dict, n: int) -> dict:
    config = dict(spec["config"])
    if "bands" in config:
        config["bands"] = n
    return {"kind": spec["kind"], "config": config}


def start_networks(folder: Path, card: dict, n: int) -> dict:
    """The network specs of every stage, from the start bundle's card, for ``n`` bands."""
    decoder = card["networks"][card.get("decoder", "decoder")]
    encoder = bundle.load_encoder(str(folder))
    latent = int(card.get("latent", decoder["config"]["latent"]))
    if encoder is not None and encoder[0]["config"]["latent"] == latent:
        encoder_spec = with_bands(encoder[0], n)
    else:
        encoder_spec = {"kind": "encoder", "config": preset(encoder_preset(decoder["config"]), "encoder", n, latent)}
    old_bands = int(card["bands"])
    decoder = with_bands(decoder, n)
    copies = band_start.band_group_copies(old_bands, n) if n > old_bands else 1
    for width in ("channels", "up_channels", "tail_channels"):  # one trunk per band group (training.bands)
        decoder["config"][width] = int(decoder["config"][width]) * copies
    decoder["config"]["detail"] = True  # a bundle made before the detail path gains one (started by PCA in stage 1)
    specs = {"stage1": {"encoder": encoder_spec, "decoder": decoder}}
    for method in METHODS:
        spec = card.get("methods", {}).get(method)
        if spec:
            specs[method] = {role: with_bands(card["networks"][spec[role]], n) for role in ("condition", "denoiser")}
    return specs


def stale_stage2(run: Path, stage1: Path) -> bool:
    """Whether the stage-2 run folder ``run`` was trained on another stage-1 model than ``stage1``'s."""
    try:
        card = json.loads((run / modelfile.CARD).read_text())
        now = json.loads((stage1 / modelfile.CARD).read_text())["weights"]["sha256"]
    except (OSError, ValueError, KeyError):
        return False
    return card.get("stage1", {}).get("sha256") != now


def up_to_date(out: Path, tensors: dict) -> bool:
    """Whether ``out`` already holds these weights with their ONNX graphs (a finished run again)."""
    from safetensors.torch import save as save_safetensors

    try:
        card = modelfile.read_card(out)
    except LatentSRError:
        return False
    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    return bool(card.get("onnx")) and card.get("weights", {}).get("sha256") == modelfile.sha256(data)


def run(job: Finetune, report: Callable | None = None, should_stop: Callable[[], bool] | None = None) -> Path:
    """Fine-tune and write the bundle into ``job.out``; returns its folder. ``report(stage, k,
    stages, step, steps, loss, val)`` after every step (val: the last validation PSNRs or None);
    ``should_stop()``: True checkpoints the running stage and raises training.errors.Interrupted."""
    from . import export
    from .e2diffsr import E2DiffSRStage
    from .lcmsr import LCMSRStage
    from .stage1 import Stage1

    start = time.perf_counter()
    try:
        folder = modelfile.resolve(job.init)
        card = modelfile.read_card(folder)
    except LatentSRError as exc:
        raise TrainingError(str(exc)) from None
    out = Path(job.out)
    if out.resolve() == folder.resolve():
        raise TrainingError(f"the output folder {out} is the start model's folder: choose another")
    if out.exists() and not out.is_dir():
        raise TrainingError(f"the output {out} exists and is not a folder")
    for p in (job.steps, job.stage2_steps or 1):
        if p < 1:
            raise TrainingError("the number of steps must be at least 1")
    if not 1 <= job.scale_min <= job.scale_max <= 8:
        raise TrainingError(f"the scales must satisfy 1 <= MIN <= MAX <= 8, got {job.scale_min:g} {job.scale_max:g}")
    runs = out / RUNS
    old_bands = int(card["bands"])

    def settings(stage: str, steps: int, **extra) -> Settings:
        # the cosine horizon is the stage's steps, also when resumed with more: a longer run warm-restarts
        return Settings(data=list(job.rasters), val=list(job.val) if job.val else None, out=str(runs / stage),
                        steps=steps, schedule_steps=steps, batch=job.batch, lr=job.lr, warmup=min(100, max(1, steps // 10)),
                        resume=True, device=job.device, ckpt_every=max(1, min(100, steps)),
                        val_every=max(VAL_EVERY, -(-steps // 4)), crop=job.crop, workers=job.workers, seed=job.seed,
                        scale_min=job.scale_min, scale_max=job.scale_max, val_images=job.val_images,
                        val_crop=job.val_crop, progress=job.progress, rasters=True, raster_bands=job.bands, **extra)

    probe = settings("stage1", job.steps)
    from . import data

    n = data.training_source(probe).bands
    specs = start_networks(folder, card, n)
    methods = [m for m in METHODS if m in specs]
    if not methods:
        raise TrainingError(f"the start model {folder} has no diffusion method (e2diffsr, lcmsr) to fine-tune")
    stages = [("stage1", Stage1, job.steps)] + [(m, {"e2diffsr": E2DiffSRStage, "lcmsr": LCMSRStage}[m],
                                                  job.stage2_steps or max(1, job.steps // 2)) for m in methods]
    for k, (name, cls, steps) in enumerate(stages):
        if name == "stage1":
            s = settings(name, steps, latent=int(specs["stage1"]["decoder"]["config"]["latent"]),
                         options=dict(STAGE1_OPTIONS, init=str(folder), networks=specs["stage1"]))
        else:
            if (runs / name / STATE).exists() and stale_stage2(runs / name, runs / "stage1"):
                log.info("%s: stage 1 has moved on since this run began; it starts again", name)
                if distributed.is_main():
                    shutil.rmtree(runs / name)
                distributed.barrier()
            s = settings(name, steps, stage1=str(runs / "stage1"),
                         options={"init": str(folder), "networks": specs[name]})
        log.info("fine-tune %d/%d: %s, %d steps", k + 1, len(stages), name, steps)
        trainer = Trainer(cls, s)
        if report is not None:
            trainer.report = (lambda name, k, steps: lambda step, loss, val: report(name, k, len(stages), step, steps,
                                                                                   loss, val))(name, k, steps)
        trainer.should_stop = should_stop
        trainer.run()
    result, tensors = bundle.from_stages(str(runs / "stage1"), str(runs / "e2diffsr") if "e2diffsr" in methods else None,
                                         str(runs / "lcmsr") if "lcmsr" in methods else None, job.name or out.name)
    for method, spec in card.get("methods", {}).items():
        if "detail_default" in spec and method in result["methods"]:
            result["methods"][method]["detail_default"] = spec["detail_default"]
    result["fine_tuned_from"] = {"model": card.get("name"), "folder": str(folder), "sha256": card["weights"]["sha256"],
                                 "bands": old_bands}
    if n != old_bands:
        result["band_start"] = band_start.describe(old_bands, n)
    result["training"]["finetune"] = {"rasters": [str(r) for r in job.rasters], "bands": job.bands,
                                      "steps": {name: steps for name, _, steps in stages},
                                      "scales": [job.scale_min, job.scale_max], "batch": job.batch, "crop": job.crop,
                                      "device": job.device, "seconds_this_run": round(time.perf_counter() - start)}
    if up_to_date(out, tensors):
        log.info("%s is already the bundle of these runs", out)
        return out
    if distributed.is_main():  # under torchrun, rank 0 writes the bundle while the others wait
        bundle.write(out, result, tensors, bundle.stage1_encoder(str(runs / "stage1")))
        export.export(str(out))
        log.info("wrote %s (methods: %s)", out, ", ".join(result["methods"]))
    distributed.barrier()
    return out
