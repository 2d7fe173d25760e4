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

import importlib.metadata
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import latent, modelfile, precision
from .errors import LatentSRError
from .grid import Grid
from .models.sampling import unet_multiple
from .registry import METHODS, REGISTRY

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


def steps_help() -> str:
    """The default steps of the stochastic methods, in words (for help texts)."""
    return ", ".join(f"{m.short} defaults to {m.default_steps}" for m in REGISTRY.values() if m.stochastic)


DETAIL_HELP = ("Detail D (0–1) of the diffusion methods, from faithful to detailed: 0 gives the deterministic, most "
               "faithful result (the regression latent, seed ignored), 1 a full sample of the model; in between the "
               "latent is blended. The default is the model card's detail_default. Regression and Bicubic ignore it.")


def default_detail(name: str, card: dict | None = None) -> float | None:
    """The detail a stochastic method runs at when none is given: the card's ``detail_default`` for the
    method (``methods.<name>.detail_default``), else the registry's. None for the deterministic methods."""
    info = REGISTRY[name]
    if not info.stochastic:
        return None
    spec = (card or {}).get("methods", {}).get(name, {})
    return latent.check_detail(spec.get("detail_default", info.default_detail))


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


def cuda_backend(backend: str, card: dict) -> str | None:
    """The backend that would really run on a CUDA GPU for ``backend`` (auto/torch/onnx), or None:
    PyTorch when it sees a GPU, else ONNX Runtime when it can start a CUDA session (onnxruntime-gpu
    lists its CUDA provider even where no GPU or CUDA library exists) and, for auto, the model has graphs."""
    if backend in ("auto", "torch") and torch_sees_cuda("cuda"):
        return "torch"
    if backend in ("auto", "onnx") and importable("onnxruntime") and (backend == "onnx" or card.get("onnx")):
        from . import onnx_backend

        if onnx_backend.cuda_works():
            return "onnx"
    return None


def choose_backend(backend: str, device: str, card: dict) -> str:
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
    if importable("onnxruntime") and card.get("onnx"):
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


def method_detail(name: str, detail: float | None, card: dict) -> float:
    """The detail method ``name`` runs at: ``detail`` checked, or the card's default (0 for the
    deterministic methods, which have no sampler)."""
    if not REGISTRY[name].stochastic:
        return 0.0
    return default_detail(name, card) if detail is None else latent.check_detail(detail)


def method_spec(card: dict, name: str) -> dict:
    """The card's entry for method ``name``; a LatentSRError if the model does not have it."""
    spec = card.get("methods", {}).get(name)
    if spec is None:
        raise LatentSRError(f"the model '{card.get('name')}' cannot run method '{name}': "
                            f"it has {', '.join(card.get('methods', {})) or 'no methods'}")
    return spec


def latent_multiple(card: dict, spec: dict) -> int:
    """The latent grid's alignment for a method: its denoiser's downsampling factor (1 without one)."""
    if "denoiser" not in spec:
        return 1
    return unet_multiple(card["networks"][spec["denoiser"]]["config"]["channels"])


def learned(name: str, card: dict, spec: dict, nets, steps: int, detail: float) -> latent.LatentMethod:
    """The learned method ``name`` of a bundle (its card and the method's entry) over a backend's networks."""
    return latent.LatentMethod(REGISTRY[name], nets, spec, int(card["bands"]), int(card.get("latent", 4)), steps,
                               latent_multiple(card, spec),
                               card["networks"][card.get("decoder", "decoder")]["config"], detail)


def method_steps(name: str, steps: int | None, spec: dict, card_path=None) -> int:
    """The steps method ``name`` runs with: the card entry ``spec`` within the engine's bounds (a
    LatentSRError naming the card file ``card_path`` and the field otherwise), then ``steps`` (None: the
    card's default, else the registry's) within the card's (its betas or max_steps, else the registry's
    maximum). A deterministic method runs 0 steps."""
    info = REGISTRY[name]
    problem = steps_problem(name, spec)
    if problem:
        raise LatentSRError(f"the model card{' ' + str(card_path) if card_path else ''} is not valid: {problem}")
    if info.max_steps == 0:
        return 0
    top = len(spec["betas"]) if "betas" in spec else int(spec.get("max_steps", info.max_steps))
    steps = int(spec.get("steps", info.default_steps)) if steps is None else steps
    if not 1 <= steps <= top:
        raise LatentSRError(f"steps must be between 1 and {top} for {name}, got {steps}")
    return steps


def steps_problem(name: str, spec: dict) -> str | None:
    """What is wrong with the step fields of a card's method entry ``spec``, naming the field, or None:
    the engine's own step range of the method (engine.registry) bounds the card's too, so a card's betas,
    max_steps and steps lie within 1..the registry's max_steps."""
    top = REGISTRY[name].max_steps
    if top == 0:
        return None
    bounds = f"LatentSR runs {name} with 1 to {top} steps"
    if "betas" in spec:
        if not isinstance(spec["betas"], list) or not 1 <= len(spec["betas"]) <= top:
            count = len(spec["betas"]) if isinstance(spec["betas"], list) else repr(spec["betas"])
            return f"'methods.{name}.betas' gives {count} steps: {bounds}"
        top = len(spec["betas"])
    elif "max_steps" in spec:
        if not modelfile.positive_int(spec["max_steps"]) or spec["max_steps"] > top:
            return f"'methods.{name}.max_steps' is {spec['max_steps']!r}: {bounds}"
        top = spec["max_steps"]
    if "steps" in spec and (not modelfile.positive_int(spec["steps"]) or spec["steps"] > top):
        return f"'methods.{name}.steps' is {spec['steps']!r}: {name} runs with 1 to {top} steps in this model"
    return None


def from_bundle(name: str, card: dict, tensors: dict, steps: int | None = None,
                device: str = "auto", detail: float | None = None) -> latent.LatentMethod:
    """The method ``name`` over an already loaded bundle, on torch."""
    from . import torch_backend

    spec = method_spec(card, name)
    steps = method_steps(name, steps, spec)
    return learned(name, card, spec, torch_backend.networks(card, tensors, spec, device), steps,
                   method_detail(name, detail, card))


def build_learned(name: str, options: MethodOptions) -> latent.LatentMethod:
    folder = modelfile.resolve(options.model)
    card = modelfile.read_card(folder)
    detail = method_detail(name, options.detail, card)
    if choose_backend(options.backend, options.device, card) == "onnx":
        from . import onnx_backend

        precision.choose(options.precision, "onnx", options.device)
        onnx_backend.require(name, options.backend)
        spec = method_spec(card, name)
        onnx_backend.require_graphs(card, folder)
        steps = method_steps(name, options.steps, spec, folder / modelfile.CARD)
        nets = onnx_backend.networks(REGISTRY[name], folder, card, spec, options.device, options.threads,
                                     REGISTRY[name].fuses(steps, detail))
    else:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise LatentSRError("backend 'torch' needs PyTorch, which cannot be imported here: install it, "
                                "or use backend onnx") from None
        from . import torch_backend

        card, tensors = modelfile.load(str(folder))
        spec = method_spec(card, name)
        steps = method_steps(name, options.steps, spec, folder / modelfile.CARD)
        nets = torch_backend.networks(card, tensors, spec, options.device, options.precision)
    method = learned(name, card, spec, nets, steps, detail)
    latent.describe(method, card.get("name"), nets.where)
    return method


def build_method(name: str, options: MethodOptions = MethodOptions()) -> SRMethod:
    """The method called ``name``; a LatentSRError if it cannot run here."""
    if name not in REGISTRY:
        raise LatentSRError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
    if options.detail is not None:
        latent.check_detail(options.detail)
    precision.check(options.precision)
    ignore_detail(name, options.detail)
    if not REGISTRY[name].learned:
        return REGISTRY[name].plain()
    return build_learned(name, options)
