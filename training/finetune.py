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

What it may write: OUT must be absent, empty, or a run of its own, which the run marker (MARKER,
the first file a fine-tune writes there) recognises; a run again with other defining options
(DEFINING: the data, bands, start model, scales, crop...) is refused, as is an OUT inside the
plugin's bundled models or inside a folder of training or validation rasters (its own files would
become training data).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from engine import modelfile
from engine.card import Card, parse
from engine.errors import LatentSRError
from engine.models import PRESETS, preset
from engine.registry import E2DIFFSR, LCMSR, REGISTRY

from . import bands as band_start
from . import bundle, distributed, recipe
from .errors import TrainingError
from .trainer import STATE, Settings, Trainer, check_options, deferred_interrupts

log = logging.getLogger(__name__)

RUNS = "training"  # OUT/training/<stage>: the run folders
VAL_EVERY = 50  # at least this many steps between validations (and at the end of each stage)
METHODS = tuple(m.name for m in bundle.STAGE2)
MARKER = "finetune-run.json"  # OUT/MARKER: this folder is a fine-tune's run, and of which options
MARKER_FORMAT = "latentsr-finetune-run"
# the options that make a run what it is; --steps, --stage2-steps, --device, --workers and --name may
# change when it resumes
DEFINING = ("rasters", "val", "bands", "init", "init_sha256", "scales", "crop", "batch", "lr", "seed", "val_crop",
            "val_images")


@dataclass
class Finetune:
    rasters: list
    out: str
    bands: list | None = None  # 1-based raster bands (None: all)
    init: str | None = None  # the start bundle (None: the default model)
    steps: int = recipe.FINETUNE["steps"]  # stage-1 steps
    stage2_steps: int | None = None  # steps of each stage-2 method (None: steps / 2)
    scale_min: float = recipe.RUN["scales"][0]
    scale_max: float = recipe.RUN["scales"][1]
    val: list | None = None  # validation rasters (None: held-back rows of the training rasters)
    device: str = "cpu"
    batch: int = recipe.RUN["batch"]
    crop: int = recipe.RUN["crop"]
    lr: float = recipe.FINETUNE["lr"]
    seed: int = recipe.RUN["seed"]
    workers: int = 0
    val_images: int = recipe.RUN["val_images"]
    val_crop: int = recipe.RUN["val_crop"]
    name: str | None = None
    progress: bool = True


def encoder_preset(decoder_config: dict) -> str:
    """The preset whose decoder has this configuration (sizes only), else "default"."""
    shape = ("detail", "detail_flat", "synth", "gate")
    sizes = {k: v for k, v in decoder_config.items() if k not in ("bands", "latent", *shape)}
    for name, kinds in PRESETS.items():
        if {k: v for k, v in kinds["decoder"].items() if k not in shape} == sizes:
            return name
    return "default"


def with_bands(spec: dict, n: int) -> dict:
    config = dict(spec["config"])
    if "bands" in config:
        config["bands"] = n
    return {"kind": spec["kind"], "config": config}


def check_start(folder: Path) -> None:
    """The start bundle opens as the engine opens any model (engine.modelfile.load: the files its card
    names are regular files inside its folder, read with a bound, and each network's configuration is
    compared with its weights' shapes before any network is built), and so does the stage-1 encoder it
    ships (bundle.load_encoder); else a one-line TrainingError naming the card."""
    try:
        modelfile.load(folder)
    except LatentSRError as exc:
        raise TrainingError(str(exc)) from None
    bundle.load_encoder(str(folder))


def start_networks(folder: Path, card: Card, n: int) -> dict:
    """The network specs of every stage, from the start bundle's card, for ``n`` bands (a card whose
    entries do not give them: a one-line TrainingError naming it)."""
    check_start(folder)
    try:
        return card_networks(folder, card, n)
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"the start model's card {folder / modelfile.CARD} does not give its networks' "
                            f"configuration ({type(exc).__name__}: {str(exc).strip()[:80]})") from None


def card_networks(folder: Path, card: Card, n: int) -> dict:
    decoder = card.networks[card.decoder].to_json()
    encoder = bundle.load_encoder(str(folder))
    latent = card.latent
    if encoder is not None and encoder[0]["config"]["latent"] == latent:
        encoder_spec = with_bands(encoder[0], n)
    else:
        encoder_spec = {"kind": "encoder", "config": preset(encoder_preset(decoder["config"]), "encoder", n, latent)}
    old_bands = card.bands
    decoder = with_bands(decoder, n)
    copies = band_start.band_group_copies(old_bands, n) if n > old_bands else 1
    for width in ("channels", "up_channels", "tail_channels"):  # one trunk per band group (training.bands)
        decoder["config"][width] = int(decoder["config"][width]) * copies
    decoder["config"]["detail"] = True  # a bundle made before the detail path gains one (started by PCA in stage 1)
    specs = {"stage1": {"encoder": encoder_spec, "decoder": decoder}}
    for method in METHODS:
        if method in card.methods:
            spec = card.methods[method]
            specs[method] = {role: with_bands(card.networks[getattr(spec, role)].to_json(), n)
                             for role in REGISTRY[method].roles}
    return specs


def stale_stage2(run: Path, stage1: Path) -> bool:
    """Whether the stage-2 run folder ``run`` was trained on another stage-1 model than ``stage1``'s."""
    try:
        return modelfile.read_card(run).stage1 != modelfile.read_card(stage1).weights.sha256
    except LatentSRError:
        return False


def up_to_date(out: Path, tensors: dict) -> bool:
    """Whether ``out`` already holds these weights with their ONNX graphs (a finished run again)."""
    from safetensors.torch import save as save_safetensors

    try:
        card = modelfile.read_card(out)
    except LatentSRError:
        return False
    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    return card.onnx is not None and card.weights.sha256 == modelfile.sha256(data)


def check(job: Finetune) -> None:
    """The job's options in their ranges, else a one-line TrainingError (before anything is read or written)."""
    for flag, value in (("--steps", job.steps), ("--stage2-steps", 1 if job.stage2_steps is None else job.stage2_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainingError(f"{flag} must be a whole number of at least 1, got {value}")
    scales = (job.scale_min, job.scale_max)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in scales) or not 1 <= job.scale_min <= job.scale_max <= 8:
        raise TrainingError(f"the scales must satisfy 1 <= MIN <= MAX <= 8, got {job.scale_min:g} {job.scale_max:g}")
    check_options(job)
    if not job.rasters:
        raise TrainingError("no training rasters given")
    if job.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was given but PyTorch sees no CUDA GPU")


def location(path) -> str:
    """A raster as the run marker records it: a file or folder by its absolute path, anything else
    GDAL opens (/vsi… paths, subdataset names) as given."""
    text = str(path)
    return str(Path(text).resolve()) if Path(text).exists() else text


def defining(job: Finetune, folder: Path, card: Card) -> dict:
    """The options that define the run (DEFINING), as the run marker records them."""
    return {"rasters": [location(r) for r in job.rasters], "val": [location(v) for v in job.val] if job.val else None,
            "bands": list(job.bands) if job.bands else None, "init": str(folder.resolve()),
            "init_sha256": card.weights.sha256, "scales": [float(job.scale_min), float(job.scale_max)],
            "crop": job.crop, "batch": job.batch, "lr": float(job.lr), "seed": job.seed, "val_crop": job.val_crop,
            "val_images": job.val_images}


def check_out(out: Path, job: Finetune, options: dict) -> bool:
    """Whether the fine-tune may write into ``out``, refused in one line otherwise: never into the
    plugin's bundled models or a folder of its training or validation rasters; an existing folder only
    when it is empty, or is this fine-tune's own run (its MARKER) with the same DEFINING options.
    True when ``out`` is already this run (its marker is there)."""
    here = out.resolve()
    bundled = modelfile.MODELS_DIR.resolve()
    if here == bundled or here.is_relative_to(bundled):
        raise TrainingError(f"the output folder {out} is inside the plugin's bundled models ({bundled}), which a "
                            "fine-tune never writes: choose a folder of your own")
    for source in list(job.rasters) + list(job.val or []):
        folder = Path(source)
        if folder.is_dir() and (here == folder.resolve() or here.is_relative_to(folder.resolve())):
            raise TrainingError(f"the output folder {out} is inside the raster folder {source}, so the model's own "
                                "files would become training data: choose an output folder outside it")
    if out.exists() and not out.is_dir():
        raise TrainingError(f"the output {out} exists and is not a folder")
    try:
        if not out.exists() or not any(out.iterdir()):
            return False
    except OSError as exc:
        raise TrainingError(f"cannot read the output folder {out}: {exc.strerror}") from None
    marker = out / MARKER
    if not marker.is_file():
        raise TrainingError(f"the output folder {out} already holds files and is not a fine-tune run (it has no "
                            f"{MARKER}): a fine-tune writes only into a new or empty folder, or resumes its own")
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("format") != MARKER_FORMAT or not isinstance(saved.get("options"), dict):
            raise ValueError("not a fine-tune run marker")
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"the run marker {marker} is damaged ({reason}): delete the folder {out} to start this "
                            "run over, or choose another --out") from None
    for key in DEFINING:
        if saved["options"].get(key) != options[key]:
            raise TrainingError(f"{out} is the run of another fine-tune ({key} was {saved['options'].get(key)!r}, now "
                                f"{options[key]!r}): choose a new --out for this one (only --steps, --stage2-steps, "
                                "--device, --workers and --name may change when a run resumes)")
    return True


def write_marker(out: Path, options: dict) -> None:
    """OUT/MARKER, written whole (before any other file of the run)."""
    tmp = out / (MARKER + ".tmp")
    with deferred_interrupts() as hits:
        try:
            out.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"format": MARKER_FORMAT, "version": 1, "options": options}, indent=2) + "\n",
                           encoding="utf-8")
            os.replace(tmp, out / MARKER)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise TrainingError(f"cannot write the output folder {out}: {exc.strerror}") from None
    if hits:
        signal.raise_signal(hits[0])


def run(job: Finetune, report: Callable | None = None, should_stop: Callable[[], bool] | None = None) -> Path:
    """Fine-tune and write the bundle into ``job.out``; returns its folder. ``report(stage, k,
    stages, step, steps, loss, val)`` after every step (val: the last validation PSNRs or None);
    ``should_stop()``: True checkpoints the running stage and raises training.errors.Interrupted."""
    from . import export
    from .e2diffsr import E2DiffSRStage
    from .lcmsr import LCMSRStage
    from .stage1 import Stage1

    start = time.perf_counter()
    check(job)
    try:
        folder = modelfile.resolve(job.init)
        card = modelfile.read_card(folder)
    except LatentSRError as exc:
        raise TrainingError(str(exc)) from None
    out = Path(job.out)
    if out.resolve() == folder.resolve():
        raise TrainingError(f"the output folder {out} is the start model's folder: choose another")
    options = defining(job, folder, card)
    ours = check_out(out, job, options)
    runs = out / RUNS
    old_bands = card.bands

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
        raise TrainingError(f"the start model {folder} has no diffusion method ({', '.join(METHODS)}) to fine-tune")
    distributed.init(distributed.device(job.device))
    distributed.barrier()  # every rank has checked OUT before rank 0 marks it
    if not ours and distributed.is_main():
        write_marker(out, options)
    distributed.barrier()
    classes = {cls.method: cls for cls in (E2DiffSRStage, LCMSRStage)}
    stages = [("stage1", Stage1, job.steps)] + [(m, classes[m],
                                                  job.stage2_steps or max(1, job.steps // 2)) for m in methods]
    for k, (name, cls, steps) in enumerate(stages):
        if name == "stage1":
            s = settings(name, steps, latent=int(specs["stage1"]["decoder"]["config"]["latent"]),
                         options=dict(recipe.FINETUNE["stage1_options"], init=str(folder),
                                      networks=specs["stage1"]))
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
    folders = {m: str(runs / m) if m in methods else None for m in METHODS}
    made, tensors = bundle.from_stages(str(runs / "stage1"), folders[E2DIFFSR.name], folders[LCMSR.name],
                                       job.name or out.name)
    result = made.to_json()
    for method, spec in card.methods.items():
        if "detail_default" in spec.given and method in made.methods:
            result["methods"][method]["detail_default"] = spec.detail_default
        if spec.sample_edge is not None and method in made.methods and made.methods[method].max_steps == spec.max_steps:
            # a short fine-tune from the start model keeps its measured edge (python -m training reach measures this one)
            result["methods"][method]["sample_edge"] = list(spec.sample_edge)
    result["fine_tuned_from"] = {"model": card.name, "folder": str(folder), "sha256": card.weights.sha256,
                                 "bands": old_bands}
    if n != old_bands:
        result["band_start"] = band_start.describe(old_bands, n)
    result["training"]["finetune"] = {"rasters": [str(r) for r in job.rasters], "bands": job.bands,
                                      "steps": {name: steps for name, _, steps in stages},
                                      "scales": [job.scale_min, job.scale_max], "batch": job.batch, "crop": job.crop,
                                      "device": job.device, "seconds_this_run": round(time.perf_counter() - start)}
    result = parse(result)
    if up_to_date(out, tensors):
        log.info("%s is already the bundle of these runs", out)
        return out
    if distributed.is_main():  # under torchrun, rank 0 writes the bundle while the others wait
        with deferred_interrupts() as hits:  # the weights and the card, written whole
            bundle.write(out, result, tensors, bundle.stage1_encoder(str(runs / "stage1")))
        if hits:
            signal.raise_signal(hits[0])
        export.export(str(out))
        log.info("wrote %s (methods: %s)", out, ", ".join(result.methods))
    distributed.barrier()
    return out
