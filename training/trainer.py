"""The training loop shared by all stages: data, LR schedule, EMA, validation, checkpoints.

Resuming is exact: every random draw of step k (crops, flips, scale, noise) is seeded by
(seed, k), and a checkpoint holds the weights, their EMA and the optimizer state (safetensors)
plus the step, the schedule horizon, the stage state and the history (JSON).

Under torchrun the ranks share each step's batch (training.distributed); the checkpoint holds the
unwrapped networks and the global batch's losses, so it resumes with any number of ranks.
"""
from __future__ import annotations

import abc
import contextlib
import copy
import json
import logging
import math
import os
import platform
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine import modelfile
from engine.card import parse
from engine.models import LATENT, build, preset

from . import curves, data, distributed, precision, recipe
from .spikes import StepGuard
from .errors import Interrupted, TrainingError
from .batch import make_pair

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
STATE = "checkpoint.json"
CURVES = "curves.png"
AUX = "aux."  # the checkpoint's prefix of a stage's training-only tensors
VAL_SCALES = (2.0, 3.0, 4.0)
GRAD_CLIP = 1.0
LR_FLOOR = 0.02  # the cosine schedule ends at this fraction of the peak learning rate
STATS_STEP = 1 << 40  # data keys of the batches that set statistics before training, far from any step
MAX_SEED = 2**63 - 1  # the options' bounds (check_options)
MAX_BATCH = 4096
MAX_CROP = 1024
MAX_WORKERS = 256


@dataclass
class Settings:
    data: str
    out: str
    val: str | None = None
    steps: int = recipe.STAGE1["steps"]
    schedule_steps: int | None = None
    batch: int = recipe.RUN["batch"]
    lr: float = recipe.STAGE1["lr"]
    warmup: int = recipe.RUN["warmup"]
    resume: bool = False
    device: str = "cpu"
    ckpt_every: int = recipe.RUN["ckpt_every"]
    val_every: int = recipe.RUN["val_every"]
    crop: int = recipe.RUN["crop"]
    workers: int = 0
    seed: int = recipe.RUN["seed"]
    scale_min: float = recipe.RUN["scales"][0]
    scale_max: float = recipe.RUN["scales"][1]
    ema_decay: float = recipe.RUN["ema_decay"]
    preset: str = "default"
    bands: int = 3
    latent: int = LATENT
    val_images: int = recipe.RUN["val_images"]
    val_crop: int = recipe.RUN["val_crop"]
    progress: bool = True
    stage1: str | None = None
    options: dict = field(default_factory=dict)  # the stage's loss options (training.recipe: those left out are its base)
    rasters: bool = False  # data (and val) name GDAL rasters or folders of them (training.rasters)
    raster_bands: list | None = None  # the rasters' 1-based bands to train on (None: all)
    precision: str = "auto"  # auto, bf16 or float32 (training.precision)
    guard: float = 0.0  # training.spikes' factor (0: no guard)


def learning_rate(step: int, peak: float, warmup: int, horizon: int) -> float:
    """Linear warmup, then cosine decay to LR_FLOOR·peak at ``horizon``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, horizon - warmup))
    return peak * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * t)))


def ema_decay(step: int, decay: float) -> float:
    """The EMA decay at a step, warmed up so that early averages follow the weights."""
    return min(decay, (1 + step) / (10 + step))


def step_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.default_rng([seed, step, 1 << 31]).integers(1 << 62)))
    return g


def optimizer_tensors(state: dict, prefix: str) -> dict:
    """An optimizer's state_dict()["state"] as flat tensors named prefix.<param index>.<what>."""
    return {f"{prefix}.{idx}.{what}": v.detach().contiguous() for idx, st in state["state"].items() for what, v in st.items()}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, prefix: str, param_groups: list) -> None:
    """Restore an optimizer from what optimizer_tensors wrote and its JSON param_groups."""
    state = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            idx, what = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[what] = v.cpu() if what == "step" else v
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for model cards and benchmarks."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"


def hardware(device: torch.device) -> str:
    """What a run trains on, for the model card: the GPU, or the CPU with its cores and torch's threads."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def aux_part(tensors: dict) -> dict:
    """A checkpoint's training-only tensors (what Stage.aux_tensors wrote), without their "aux." prefix."""
    return {k[len(AUX):]: v for k, v in tensors.items() if k.startswith(AUX)}


def psnr(a: torch.Tensor, b: torch.Tensor, border: int) -> torch.Tensor:
    """Per-image PSNR (dB) of [0, 1] images after cropping ``border`` pixels."""
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = ((a.clamp(0, 1) - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


class Stage(abc.ABC):
    """What a stage adds to the loop. ``NETWORKS`` maps the trainable networks' export names to
    their kinds; they are built from the preset, or from the specs stored in a checkpoint."""

    name = ""
    NETWORKS: dict[str, str] = {}
    step = 0  # the training step of the current loss call (set by the trainer)
    adversary = None  # a training.adversary.Adversary when the stage trains against a discriminator

    def __init__(self, settings: Settings, device: torch.device, specs: dict | None):
        self.settings, self.device = settings, device
        self.specs = specs or {n: {"kind": k, "config": preset(settings.preset, k, bands=settings.bands, latent=settings.latent)}
                               for n, k in self.NETWORKS.items()}
        self.nets = {n: build(s["kind"], s["config"]).to(self.device) for n, s in self.specs.items()}

    def modules(self) -> list[torch.nn.Module]:
        """Every network a training step runs: the trained ones, and the critic."""
        return list(self.nets.values()) + ([] if self.adversary is None else [self.adversary.net])

    @property
    def multiple(self) -> int:
        """The latent alignment the stage's networks need."""
        return max([getattr(m, "multiple", 1) for m in self.nets.values()])

    def setup(self) -> None:
        """Once, before the first step of a fresh run."""

    def stats_pairs(self, count: int):
        """``count`` training pairs outside the steps' data, for statistics taken before training."""
        s = self.settings
        ds = data.dataset(data.training_source(s), s.crop, s.bands, s.seed)
        for k in range(count):
            hr = torch.stack([ds[(STATS_STEP + k, i)] for i in range(s.batch)]).to(self.device)
            yield make_pair(hr, data.batch_scale(s.seed, STATS_STEP + k, s.scale_min, s.scale_max), self.multiple)

    def state(self) -> dict:
        """JSON-able state to keep in checkpoints (here: the adversary's optimizer settings)."""
        return {} if self.adversary is None else self.adversary.state()

    def load_state(self, state: dict) -> None:
        """Restore what ``state`` returned."""
        if self.adversary is not None:
            self.adversary.load_state(state)

    def aux_tensors(self) -> dict:
        """Tensors of training-only state beside the exported networks (the adversary's
        discriminator and its optimizer) to keep in checkpoints."""
        return {} if self.adversary is None else self.adversary.tensors()

    def load_aux_tensors(self, tensors: dict) -> None:
        """Restore what ``aux_tensors`` returned (called after ``load_state``)."""
        if self.adversary is not None:
            self.adversary.load_tensors(tensors)

    @abc.abstractmethod
    def loss(self, pair, gen: torch.Generator, ema: dict) -> tuple[torch.Tensor, dict]:
        """The training loss of one batch and a few named values to show."""

    @abc.abstractmethod
    def predict(self, pair, ema: dict) -> torch.Tensor:
        """The SR of a batch with the EMA networks (validation)."""

    def reference(self, pair, ema: dict) -> torch.Tensor | None:
        """A second SR of a batch that validation compares the model with, or None."""
        return None

    @abc.abstractmethod
    def export_card(self) -> dict:
        """Card fields of the stage's output model folder, besides networks and training."""


def check_options(o) -> None:
    """The options a run shares with a fine-tune (Settings or training.finetune.Finetune: batch,
    crop, val_crop, val_images, lr, workers, seed) in their ranges, else a one-line TrainingError."""
    def whole(value, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    if not whole(o.batch, 1, MAX_BATCH):
        raise TrainingError(f"--batch must be a whole number from 1 to {MAX_BATCH}, got {o.batch}")
    for flag, value in (("--crop", o.crop), ("--val-crop", o.val_crop)):
        if not whole(value, 32, MAX_CROP) or value % 32:
            raise TrainingError(f"{flag} must be a multiple of 32 from 32 to {MAX_CROP}, got {value}")
    if not whole(o.val_images, 1, 1 << 20):
        raise TrainingError(f"--val-images must be a whole number of at least 1, got {o.val_images}")
    if isinstance(o.lr, bool) or not isinstance(o.lr, (int, float)) or not math.isfinite(o.lr) or o.lr <= 0:
        raise TrainingError(f"--lr must be a finite number greater than 0, got {o.lr}")
    if not whole(o.workers, 0, MAX_WORKERS):
        raise TrainingError(f"--workers must be a whole number from 0 to {MAX_WORKERS}, got {o.workers}")
    if not whole(o.seed, 0, MAX_SEED):
        raise TrainingError(f"--seed must be a whole number from 0 to 2**63-1, got {o.seed}")


@contextlib.contextmanager
def deferred_interrupts():
    """While the block runs, Ctrl-C (SIGINT) and SIGTERM (a batch scheduler stopping the job) are only
    appended to the list it yields, so that the block can finish a step or a write; the caller acts
    on them. Outside the main thread it changes nothing."""
    hits: list = []
    if threading.current_thread() is not threading.main_thread():
        yield hits
        return
    previous = {s: signal.signal(s, lambda signum, frame: hits.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield hits
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def damaged(path: Path, out: Path, exc: BaseException) -> TrainingError:
    """The one-line error of a training state file that cannot be read back."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainingError(f"the training state {path} is damaged ({reason}): delete the folder {out} to start this "
                         "run over, or choose another --out")


class Trainer:
    """``report(step, loss, val)`` is called after every step (val: the last validation's
    PSNRs, or None); ``should_stop()`` after every step too: True checkpoints and raises
    Interrupted, as Ctrl-C does."""

    report = None
    should_stop = None

    def __init__(self, stage_cls, settings: Settings):
        self.s = settings
        self.out = Path(settings.out)
        self.device = distributed.device(settings.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError("--device cuda was given but PyTorch sees no CUDA GPU")
        check_options(settings)
        if not math.isfinite(settings.guard) or not (settings.guard == 0 or settings.guard > 1):
            raise TrainingError(f"--guard must be 0 (off) or a factor greater than 1, got {settings.guard:g}")
        distributed.init(self.device)
        if settings.batch % distributed.world_size():
            raise TrainingError(f"--batch {settings.batch} does not split evenly over {distributed.world_size()} ranks")
        for flag, value in (("--ckpt-every", settings.ckpt_every), ("--val-every", settings.val_every),
                            ("--latent", settings.latent),
                            *((f"--{key}", settings.options[key]) for key in ("channels", "blocks") if key in settings.options)):
            if value < 1:
                raise TrainingError(f"{flag} must be at least 1, got {value}")
        if settings.options.get("synth", 0) < 0:
            raise TrainingError(f"--synth must be 0 (none) or more, got {settings.options['synth']}")
        self.files = data.training_source(settings)
        ckpt = self.out / STATE
        saved = None
        if ckpt.exists():
            if not settings.resume:
                raise TrainingError(f"{self.out} already holds a checkpoint: pass --resume to continue it or choose another --out")
            try:
                saved = json.loads(ckpt.read_text(encoding="utf-8"))
                if not isinstance(saved, dict) or not isinstance(saved.get("networks"), dict):
                    raise ValueError("not a checkpoint's state")
            except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                raise damaged(ckpt, self.out, exc) from None
        # a resumed run keeps its checkpoint's precision (checkpoints from before it was recorded: float32)
        self.precision = (precision.on_resume(settings.precision, saved.get("precision", "float32")) if saved
                          else precision.choose(settings.precision, self.device))
        log.info("precision: %s", self.precision)
        torch.manual_seed(settings.seed)
        try:
            self.stage = stage_cls(settings, self.device, saved["networks"] if saved else None)
        except (KeyError, TypeError, ValueError) as exc:
            if not saved:
                raise
            raise damaged(ckpt, self.out, exc) from None
        if not saved:
            self.stage.setup()
        # after setup, so the EMA networks start from, and keep, what setup set (weights and buffers)
        self.ema = {n: copy.deepcopy(m).requires_grad_(False).eval() for n, m in self.stage.nets.items()}
        self.params = [p for m in self.stage.nets.values() for p in m.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=0.0)
        self.step = 0
        self.horizon = settings.schedule_steps or settings.steps
        self.history = {"loss": [], "val": [], "skipped": []}
        self.guard = StepGuard(settings.guard) if settings.guard > 0 else None
        self.seconds = 0.0  # wall time of the training loop, over all resumes
        if saved:
            self._restore(saved)
        if self.precision == "bf16":  # bf16 convolutions on the CPU run faster on channels_last weights (docs/TRAINING.md)
            for net in self.stage.modules() + list(self.ema.values()):
                net.to(memory_format=torch.channels_last)
        if not distributed.same_on_all(self.step):
            raise TrainingError(f"the ranks see different checkpoints in {self.out}: give all machines one shared --out")
        if distributed.world_size() > 1:  # rank 0's start on all ranks (DDP broadcasts the trained weights)
            self.stage.load_state(distributed.broadcast(self.stage.state()))
            distributed.broadcast_weights(self.ema)
        self.replicas = distributed.replicate(self.stage.nets, self.device)
        crops = data.validation(settings, self.files)
        self.val = None if crops is None else torch.from_numpy(crops)

    def _restore(self, saved: dict) -> None:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(self.out / CHECKPOINT), device=str(self.device))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            raise damaged(self.out / CHECKPOINT, self.out, exc) from None
        try:
            for prefix, nets in (("model", self.stage.nets), ("ema", self.ema)):
                for name, net in nets.items():
                    net.load_state_dict(modelfile.network_tensors(tensors, f"{prefix}.{name}"))
            load_optimizer(self.opt, tensors, "optim", saved["param_groups"])
            self.step = int(saved["step"])
            self.horizon = self.s.schedule_steps or int(saved["horizon"])
            self.history = {"loss": list(saved["history"]["loss"]), "val": list(saved["history"]["val"]),
                            "skipped": list(saved["history"].get("skipped", []))}
            if self.guard is not None:
                self.guard.load_state(saved.get("guard") or {})  # a run saved unguarded (null) or before the guard
            self.seconds = float(saved.get("seconds", 0.0))
            self.stage.load_state(saved["stage"])
            self.stage.load_aux_tensors(aux_part(tensors))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: weights that do not fit
            raise damaged(self.out / STATE, self.out, exc) from None
        log.info("resumed %s at step %d", self.out, self.step)

    def checkpoint(self) -> None:
        from safetensors.torch import save_file

        if not distributed.is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for prefix, nets in (("model", self.stage.nets), ("ema", self.ema)):
            for name, net in nets.items():
                tensors.update({f"{prefix}.{name}.{k}": v.detach().contiguous() for k, v in net.state_dict().items()})
        opt = self.opt.state_dict()
        tensors.update(optimizer_tensors(opt, "optim"))
        tensors.update({f"{AUX}{k}": v.detach().contiguous() for k, v in self.stage.aux_tensors().items()})
        settings = {k: v for k, v in asdict(self.s).items() if k != "resume"}
        state = {"step": self.step, "horizon": self.horizon, "networks": self.stage.specs,
                 "param_groups": opt["param_groups"], "stage": self.stage.state(), "settings": settings,
                 "history": self.history, "seconds": self.seconds, "precision": self.precision,
                 "guard": None if self.guard is None else self.guard.state()}
        save_file(tensors, str(self.out / (CHECKPOINT + ".tmp")), metadata={"step": str(self.step)})
        (self.out / (STATE + ".tmp")).write_text(json.dumps(state))
        os.replace(self.out / (CHECKPOINT + ".tmp"), self.out / CHECKPOINT)
        os.replace(self.out / (STATE + ".tmp"), self.out / STATE)
        self.export()
        curves.write(self.out / CURVES, self.history["loss"], self.history["val"])

    def export(self) -> None:
        """The stage's EMA networks as a model folder (model.json + model.safetensors) in --out."""
        card = self.stage.export_card()
        card["networks"] = self.stage.specs
        card["training"] = {"stage": self.stage.name, "step": self.step, "data": str(self.s.data),
                            "crop": self.s.crop, "batch": self.s.batch, "scales": [self.s.scale_min, self.s.scale_max],
                            "seed": self.s.seed, "options": {k: v for k, v in self.s.options.items() if k != "networks"},
                            "seconds": round(self.seconds), "hardware": hardware(self.device), "precision": self.precision,
                            "torch": torch.__version__,
                            "ranks": distributed.world_size(), "guard": self.s.guard,
                            "skipped_steps": len(self.history["skipped"])}
        if not isinstance(self.files, list):  # rasters: their per-band normalisation
            card["normalisation"] = self.files.card()
        tensors = {f"{n}.{k}": v for n, m in self.ema.items() for k, v in m.state_dict().items()}
        modelfile.save(self.out, parse(dict(card, name=f"{self.stage.name}-stage", bands=self.s.bands)), tensors)

    @torch.no_grad()
    def validate(self) -> list[float]:
        """Mean PSNR of the EMA model, of bicubic and, if the stage has one, of its reference SR,
        over the validation crops at VAL_SCALES."""
        rows = []
        for scale in VAL_SCALES:
            for i in range(0, len(self.val), self.s.batch):
                pair = make_pair(self.val[i:i + self.s.batch].to(self.device), scale, self.stage.multiple)
                border = math.ceil(scale)
                ref = self.stage.reference(pair, self.ema)
                rows.append([psnr(self.stage.predict(pair, self.ema), pair.hr, border), psnr(pair.lr_up, pair.hr, border)]
                            + ([] if ref is None else [psnr(ref, pair.hr, border)]))
        return [float(torch.cat(col).mean()) for col in zip(*rows)]

    def skip(self, norm: float) -> None:
        """A step the guard refused (training.spikes): logged, recorded, and after too many in a row, the end."""
        self.history["skipped"].append([self.step + 1, norm])
        log.warning("step %d skipped: gradient norm %.3g against a median of %.3g over the last %d steps",
                    self.step + 1, norm, self.guard.median, len(self.guard.recent))
        if self.guard.stuck:
            raise TrainingError(f"training diverged at step {self.step + 1}: {self.guard.in_a_row} updates in a row had "
                                f"gradients far over the usual ones; {self.out} holds the last checkpoint before it, "
                                f"resume it with a lower --lr")

    def run(self) -> None:
        s = self.s
        if self.step >= s.steps:
            log.info("%s is already at step %d of %d", self.out, self.step, s.steps)
            return
        batches = data.loader(self.files, s.crop, s.bands, s.batch, s.seed, self.step, s.steps, s.workers,
                              distributed.share(s.batch))
        bar = tqdm(total=s.steps, initial=self.step, desc=self.stage.name, disable=not (s.progress and distributed.is_main()),
                   dynamic_ncols=True)
        log.info("%s: training from step %d to %d", self.stage.name, self.step, s.steps)
        with deferred_interrupts() as interrupts:
            self._loop(batches, bar, interrupts)
        bar.close()
        distributed.barrier()  # what rank 0 wrote is complete before any rank goes on

    def _loop(self, batches, bar, interrupts: list) -> None:
        s = self.s
        clock = time.perf_counter()
        for hr in batches:
            for group in self.opt.param_groups:
                group["lr"] = learning_rate(self.step, s.lr, s.warmup, self.horizon)
            pair = make_pair(hr.to(self.device), data.batch_scale(s.seed, self.step, s.scale_min, s.scale_max),
                             self.stage.multiple)
            self.stage.step = self.step
            with distributed.training_networks(self.stage, self.replicas):
                with precision.autocast(self.device, self.precision):
                    loss, logs = self.stage.loss(pair, step_generator(self.device, s.seed, self.step), self.ema)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP))  # the same on every rank
            if self.guard is None or self.guard.admit(norm):
                self.opt.step()
                decay = ema_decay(self.step, s.ema_decay)
                with torch.no_grad():
                    for name, net in self.stage.nets.items():
                        for e, p in zip(self.ema[name].parameters(), net.parameters()):
                            e.lerp_(p, 1.0 - decay)
            else:
                self.skip(norm)
            self.step += 1
            now = time.perf_counter()
            self.seconds, clock = self.seconds + now - clock, now
            value = distributed.mean(loss.item(), self.device)
            self.history["loss"].append([self.step, value])
            bar.update(1)
            bar.set_postfix({"loss": f"{value:.4g}", **{k: f"{v:.3g}" for k, v in logs.items()}})
            if self.val is not None and distributed.is_main() and (self.step % s.val_every == 0 or self.step == s.steps):
                val = self.validate()
                self.history["val"].append([self.step, *val])
                log.info("step %d: validation PSNR %.2f dB (bicubic %.2f, %+.2f)%s", self.step, val[0], val[1], val[0] - val[1],
                         f"; reference {val[2]:.2f} dB, the model {val[0] - val[2]:+.2f} above it" if len(val) > 2 else "")
            if self.step % s.ckpt_every == 0 or self.step == s.steps:
                self.checkpoint()
            if self.report is not None:
                self.report(self.step, value, self.history["val"][-1][1:] if self.history["val"] else None)
            stop = bool(interrupts) or (self.should_stop is not None and self.should_stop())
            if self.step < s.steps and distributed.any_rank(stop, self.device):  # all ranks stop after the same step
                self.checkpoint()
                raise Interrupted(self.step, self.out, interrupts[0] if interrupts else None)
