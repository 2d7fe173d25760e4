"""Building the SR methods of engine.registry on a backend, and the request defaults.

A method is a callable ``method(tile, grid, seed) -> sr`` where ``tile`` is a float32 C×h×w LR tile in
normalised units, ``grid`` (engine.grid.Grid) says where each output pixel centre falls on the tile,
and ``seed`` draws the noise of the stochastic methods (the others ignore it). It returns float32
C×len(grid.ys)×len(grid.xs). ``halo(scale)`` is the context, in LR pixels, that the method needs at that
scale around the part of a tile it is trusted on (engine.reach); the tiler never gives it less.

The CLI, the Processing provider and the dock take the request defaults from here, and what they know
of each method (names, labels, step ranges) from engine.registry.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import latent, modelfile, precision
from .card import Card, MethodSpec
from .errors import LatentSRError
from .grid import Grid
from .models.sampling import unet_multiple
from .projection import Projected
from .registry import METHODS, REGISTRY, STOCHASTIC

log = logging.getLogger(__name__)


BACKENDS = ("auto", "torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Defaults:
    """The defaults of a request, for every front end."""

    method: str = METHODS[0]
    tile: int = 256  # input pixels
    overlap: int = 32
    backend: str = BACKENDS[0]
    device: str = DEVICES[0]
    seed: int = 0


DEFAULTS = Defaults()
DETAIL_RANGE = (0.0, 1.0)  # D: from the most faithful result (0) to a full sample of the model (1)
MAX_SAMPLES = 1000  # --samples keeps running sums (Welford), so memory does not grow with it; time does
MAX_SEED = 2**63 - 1


def steps_help() -> str:
    """The default steps of the stochastic methods, in words (for help texts)."""
    return ", ".join(f"{m.short} defaults to {m.default_steps}" for m in REGISTRY.values() if m.stochastic)


DETAIL_HELP = ("Detail D (0–1) of the diffusion methods, from faithful to detailed: 0 gives the deterministic, most "
               "faithful result (the regression latent, seed ignored), 1 a full sample of the model; in between the "
               "latent is blended. The default is the model card's detail_default. Regression and Bicubic ignore it.")


def default_detail(name: str, card: Card | None = None) -> float | None:
    """The detail a stochastic method runs at when none is given: the card's ``detail_default`` for the
    method (``methods.<name>.detail_default``, engine.card), else the registry's. None for the deterministic methods."""
    info = REGISTRY[name]
    if not info.stochastic:
        return None
    if card is None or name not in card.methods:
        return float(info.default_detail)
    return float(card.methods[name].detail_default)


def card_default_detail(name: str, model: str | None = None) -> float | None:
    """default_detail with the card of ``model`` (the registry's value when the card cannot be read)."""
    if not REGISTRY[name].stochastic:
        return None
    try:
        card = modelfile.read_card(modelfile.resolve(model))
    except LatentSRError:
        card = None
    return default_detail(name, card)


def ignore_detail(name: str, detail: float | None) -> None:
    """Log that a deterministic method ignores a given detail."""
    if detail is not None and not REGISTRY[name].stochastic:
        log.info("%s ignores detail (%g): it has no sampler", name, detail)


class SRMethod(Protocol):
    name: str
    deterministic: bool

    def halo(self, scale: float) -> int: ...

    def __call__(self, tile: np.ndarray, grid: Grid, seed: int = 0) -> np.ndarray: ...


@dataclass(frozen=True)
class MethodOptions:
    steps: int | None = None
    backend: str = DEFAULTS.backend
    device: str = DEFAULTS.device
    model: str | None = None
    threads: int | None = None  # ONNX Runtime's intra-op threads (default: every core)
    detail: float | None = None  # stochastic methods; None: the card's detail_default
    precision: str = "auto"  # engine.precision: auto, float32 or bf16


def check_detail(detail) -> float:
    """``detail`` as a float in DETAIL_RANGE; a LatentSRError for anything else (NaN, out of range, not a number)."""
    lo, hi = DETAIL_RANGE
    try:
        value = float(detail)
    except (TypeError, ValueError):
        raise LatentSRError(f"detail must be a number between {lo:g} and {hi:g}, got {detail!r}") from None
    if not lo <= value <= hi:  # also refuses NaN
        raise LatentSRError(f"detail must be between {lo:g} and {hi:g}, got {detail}")
    return value


@dataclass(frozen=True)
class RunOptions:
    """How a raster is super-resolved, the same for a run, its evaluation, the CLI flags, the
    Processing parameters and the dock's widgets. Checked when made: a RunOptions that exists is valid
    (``detail`` is checked here and nowhere else on its way to the sampler). Every field but those in
    SAMPLING builds the method (``make_method``), so every such field is in ``method_key``."""

    method: str = DEFAULTS.method
    steps: int | None = None  # None: the model card's default (the registry's without one)
    detail: float | None = None  # the diffusion methods' faithful ↔ detailed control (None: the card's default)
    backend: str = DEFAULTS.backend
    device: str = DEFAULTS.device
    model: str | None = None  # a bundled model's name or a model folder (None: the default model)
    consistency: bool = False  # project each tile so that its degradation matches the LR (engine.projection)
    precision: str = "auto"  # the learned methods' arithmetic (engine.precision)
    seed: int = DEFAULTS.seed
    samples: int = 1

    SAMPLING = ("seed", "samples")  # how the method is called, not what it is

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LatentSRError(f"unknown method '{self.method}': choose one of {', '.join(METHODS)}")
        if self.backend not in BACKENDS:
            raise LatentSRError(f"unknown backend '{self.backend}': choose one of {', '.join(BACKENDS)}")
        if self.device not in DEVICES:
            raise LatentSRError(f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")
        if self.steps is not None and self.steps < 1:
            raise LatentSRError(f"steps must be at least 1, got {self.steps}")
        if self.detail is not None:
            object.__setattr__(self, "detail", check_detail(self.detail))
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise LatentSRError(f"samples must be at least 1 and at most {MAX_SAMPLES}, got {self.samples}")
        if self.samples > 1 and self.method not in STOCHASTIC:
            raise LatentSRError(f"several samples need a diffusion method ({' or '.join(STOCHASTIC)}); {self.method} is deterministic")
        if not 0 <= self.seed <= MAX_SEED:
            raise LatentSRError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        precision.check(self.precision)

    def method_key(self) -> tuple:
        """What decides the method ``make_method`` makes: every field but SAMPLING."""
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in self.SAMPLING)

    def make_method(self) -> SRMethod:
        """The SR method these options ask for, ready to run."""
        method = build_method(self.method, MethodOptions(self.steps, self.backend, self.device, self.model,
                                                         detail=self.detail, precision=self.precision))
        return Projected(method) if self.consistency else method

    def label(self) -> str:
        """The method in a result's name: "LCMSR D0.25 s0", with the detail and the seed when the method
        samples (no seed at D = 0, where it does not matter)."""
        info = REGISTRY[self.method]
        if not info.stochastic:
            return info.short
        detail = "" if self.detail is None else f" D{self.detail:g}"
        return info.short + detail + (f" s{self.seed}" if self.detail != 0 else "")


def importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a ``None`` entry in sys.modules hides it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-initialised module
        return False


def cpu_only_torch() -> bool:
    """Whether the installed torch is a build without CUDA, known without importing it (a +cpu wheel, macOS)."""
    try:
        return sys.platform == "darwin" or importlib.metadata.version("torch").endswith("+cpu")
    except importlib.metadata.PackageNotFoundError:
        return False


def cuda_offered(backends: tuple[str, ...] = ("torch", "onnx")) -> bool:
    """Whether device cuda is worth offering for ``backends``, known cheaply (nothing is imported): an
    NVIDIA driver is installed and PyTorch is not a CPU-only build or, for onnx, onnxruntime-gpu is
    installed. The run still checks that the GPU really works (choose_backend, the backends)."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        driver = os.path.exists("/proc/driver/nvidia/version")
    else:
        system = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32")
        driver = os.path.exists(os.path.join(system, "nvcuda.dll"))
    if not driver:
        return False
    if "torch" in backends and importable("torch") and not cpu_only_torch():
        return True
    try:
        return "onnx" in backends and bool(importlib.metadata.version("onnxruntime-gpu"))
    except importlib.metadata.PackageNotFoundError:
        return False


def torch_sees_cuda(device: str) -> bool:
    """Whether the torch backend would run on a CUDA GPU for ``device`` (imports torch to ask, unless
    the installed torch is a CPU-only build)."""
    if device not in ("auto", "cuda") or not importable("torch") or cpu_only_torch():
        return False
    import torch

    return torch.cuda.is_available()


def cuda_backend(backend: str, card: Card | None) -> str | None:
    """The backend that would really run on a CUDA GPU for ``backend`` (auto/torch/onnx), or None:
    PyTorch when it sees a GPU, else ONNX Runtime when it can start a CUDA session (onnxruntime-gpu
    lists its CUDA provider even where no GPU or CUDA library exists) and, for auto, the model has graphs."""
    if backend in ("auto", "torch") and torch_sees_cuda("cuda"):
        return "torch"
    if backend in ("auto", "onnx") and importable("onnxruntime") and (backend == "onnx" or has_graphs(card)):
        from . import onnx_backend

        if onnx_backend.cuda_works():
            return "onnx"
    return None


def has_graphs(card: Card | None) -> bool:
    """Whether the card lists ONNX graphs (None: no card could be read)."""
    return card is not None and card.onnx is not None


def choose_backend(backend: str, device: str, card: Card) -> str:
    """The backend that runs: ``torch`` or ``onnx``.

    auto, by the CPU benchmark in docs/MODELS.md (ONNX Runtime is the faster one on CPU): torch when it
    would run on a CUDA GPU, else ONNX Runtime when it is installed and the bundle has ONNX graphs,
    else torch when it is installed, else ONNX Runtime (which then says what is missing). auto with
    device cuda takes the backend that can really use the GPU, and is refused when neither can."""
    if backend not in BACKENDS:
        raise LatentSRError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device == "cuda":
        found = cuda_backend("auto", card)
        if found is None:
            raise LatentSRError("device 'cuda' was requested but backend auto found no CUDA GPU: PyTorch sees none "
                                "and ONNX Runtime cannot start a CUDA session here: use device cpu or auto")
        return found
    has_torch = importable("torch")
    if has_torch and torch_sees_cuda(device):
        return "torch"
    if importable("onnxruntime") and has_graphs(card):
        return "onnx"
    return "torch" if has_torch else "onnx"


def describe_runner(method: str, backend: str, device: str, model: str | None = None,
                    cuda: bool | None = None) -> str:
    """In words, what would run ``method``: "ONNX Runtime on CPU, 2 threads". ``cuda`` says whether
    a CUDA GPU is usable when that is already known; None: not asked (nothing heavy is imported)."""
    if not REGISTRY[method].learned:
        return f"{REGISTRY[method].short} runs with NumPy on the CPU (no backend needed)"
    try:
        card = modelfile.read_card(modelfile.resolve(model))
        if device == "cuda" or (device == "auto" and cuda):
            chosen = cuda_backend(backend, card) if device == "cuda" or backend != "auto" else choose_backend(backend, "cuda", card)
            if chosen is None:
                return f"Backend {backend} cannot use a CUDA GPU here"
            return f"{'PyTorch' if chosen == 'torch' else 'ONNX Runtime'} on CUDA GPU"
        chosen = choose_backend(backend, "cpu", card)
    except LatentSRError as exc:
        return f"Cannot run: {exc}"
    if chosen == "onnx":
        text = f"ONNX Runtime on CPU, {os.cpu_count() or 1} threads"
    else:
        torch = sys.modules.get("torch")
        text = "PyTorch on CPU" + (f", {torch.get_num_threads()} threads" if torch is not None else "")
        if precision.choose("auto", "torch", "cpu") == "bf16":
            text += ", bf16"
    if device == "auto" and cuda is None:
        text += " (a GPU is looked for when the device list is opened)"
    return text


def method_detail(name: str, detail: float | None, card: Card) -> float:
    """The detail method ``name`` runs at: ``detail`` (checked once, by RunOptions), or the card's
    default (0 for the deterministic methods, which have no sampler)."""
    if not REGISTRY[name].stochastic:
        return 0.0
    return default_detail(name, card) if detail is None else float(detail)


def latent_multiple(card: Card, spec: MethodSpec) -> int:
    """The latent grid's alignment for a method: its denoiser's downsampling factor (1 without one)."""
    if spec.denoiser is None:
        return 1
    return unet_multiple(card.networks[spec.denoiser].config["channels"])


def learned(name: str, card: Card, spec: MethodSpec, nets, steps: int, detail: float) -> latent.LatentMethod:
    """The learned method ``name`` of a bundle (its card and the method's entry) over a backend's networks."""
    return latent.LatentMethod(REGISTRY[name], nets, spec, card.bands, card.latent, steps, latent_multiple(card, spec),
                               card.networks[card.decoder].config, detail)


def method_steps(name: str, steps: int | None, spec: MethodSpec) -> int:
    """The steps method ``name`` runs with: ``steps`` (None: the card entry's default, engine.card) within
    the card's range (its betas or max_steps, else the registry's). A deterministic method runs 0 steps."""
    if spec.max_steps == 0:
        return 0
    steps = spec.steps if steps is None else steps
    if not 1 <= steps <= spec.max_steps:
        raise LatentSRError(f"steps must be between 1 and {spec.max_steps} for {name}, got {steps}")
    return steps


def from_bundle(name: str, card: Card, tensors: dict, steps: int | None = None,
                device: str = "auto", detail: float | None = None) -> latent.LatentMethod:
    """The method ``name`` over an already loaded bundle, on torch."""
    from . import torch_backend

    spec = card.method_spec(name)
    steps = method_steps(name, steps, spec)
    return learned(name, card, spec, torch_backend.networks(card, tensors, spec, device), steps,
                   method_detail(name, detail, card))


def run_precision(choice: str, backend: str, device: str) -> str:
    """The arithmetic (engine.precision) a learned method runs in for the precision ``choice`` on the
    backend chosen, on the device that backend will run on (decided once, here)."""
    where = "cuda" if backend == "torch" and torch_sees_cuda(device) else "cpu"
    return precision.choose(choice, backend, where)


def build_learned(name: str, options: MethodOptions) -> latent.LatentMethod:
    """The learned method ``name`` with ``options``: the model's card read and its entry taken, the
    backend (choose_backend), steps, detail and precision decided once, then the backend's networks
    opened over them."""
    folder = modelfile.resolve(options.model)
    card = modelfile.read_card(folder)
    spec = card.method_spec(name)
    backend = choose_backend(options.backend, options.device, card)
    steps = method_steps(name, options.steps, spec)
    detail = method_detail(name, options.detail, card)
    chosen = run_precision(options.precision, backend, options.device)
    kind = REGISTRY[name]
    if backend == "onnx":
        from . import onnx_backend

        onnx_backend.require(name, options.backend)
        onnx_backend.require_graphs(card, folder)
        nets = onnx_backend.networks(kind, folder, card, spec, options.device, options.threads,
                                     kind.fuses(steps, detail))
    else:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise LatentSRError("backend 'torch' needs PyTorch, which cannot be imported here: install it, "
                                "or use backend onnx") from None
        from . import torch_backend

        nets = torch_backend.networks(card, modelfile.load_tensors(folder, card), spec, options.device, chosen)
    method = learned(name, card, spec, nets, steps, detail)
    latent.describe(method, card.name, nets.where)
    return method


def build_method(name: str, options: MethodOptions = MethodOptions()) -> SRMethod:
    """The method called ``name``; a LatentSRError if it cannot run here."""
    if name not in REGISTRY:
        raise LatentSRError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
    precision.check(options.precision)
    ignore_detail(name, options.detail)
    if not REGISTRY[name].learned:
        return REGISTRY[name].plain()
    return build_learned(name, options)
