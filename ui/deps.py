"""Optional dependencies (PyTorch, ONNX Runtime, Dask distributed): cheap detection, the plugin-private
install folder, the pinned pip command, and a lazy CUDA probe.

Detection uses ``importlib.util.find_spec`` only, so nothing heavy is imported when QGIS starts or
when the dock is built. CUDA is probed lazily by ``cuda_available``, which the dock calls the first
time the user opens the device list (importing the backends to ask them).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

from ..engine import interpreter
from ..engine.methods import cpu_only_torch, importable
from ..provider.i18n import tr

DEPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deps")

TORCH_VERSION = "2.13.0"
ONNXRUNTIME_VERSION = "1.31.1"
SAFETENSORS_VERSION = "0.8.0"
DASK_VERSION = "2026.8.0"
ONNX_VERSION = "1.19.0"
TQDM_VERSION = "4.70.1"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

def packages() -> dict:
    """What each installable choice puts into DEPS_DIR: its label (its pip requirements: requirements())."""
    return {
        "torch": tr("PyTorch {} (CPU build) and safetensors {}: runs LCMSR, E²DiffSR and Regression").format(
            TORCH_VERSION, SAFETENSORS_VERSION),
        "torch-cuda": tr("PyTorch {} with CUDA (NVIDIA GPU, Linux; several GB) and safetensors {}").format(
            TORCH_VERSION, SAFETENSORS_VERSION),
        "onnxruntime": tr("ONNX Runtime {} (CPU): the onnx backend, the faster one on CPU").format(ONNXRUNTIME_VERSION),
        "dask": tr("Dask distributed {} (optional): runs the tiles on a cluster (Processing's CLUSTER parameter)").format(
            DASK_VERSION),
        "training": tr("onnx {} and tqdm {}: needed, with PyTorch, to train models in QGIS (LatentSR → Train)").format(
            ONNX_VERSION, TQDM_VERSION),
    }


def add_to_path() -> bool:
    """Append the plugin-private folder to sys.path (after QGIS's own packages, so it never shadows
    them) and let the import system see what was installed there since start-up. True if added."""
    importlib.invalidate_caches()
    if DEPS_DIR in sys.path:
        return False
    sys.path.append(DEPS_DIR)
    return True


def detect() -> dict[str, bool]:
    return {"torch": importable("torch"), "onnxruntime": importable("onnxruntime"), "dask": importable("distributed")}


def installed_note(key: str) -> str:
    """What of the choice ``key`` (of packages()) is installed already, for its label; empty when nothing.
    The PyTorch build is told apart (a +cpu wheel is not the CUDA choice)."""
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return ""

    if key.startswith("torch"):
        torch = version("torch") if importable("torch") else ""
        if not torch:
            return ""
        cuda = not cpu_only_torch()
        if (key == "torch-cuda") == cuda:
            return tr("installed: {version}").format(version=torch)
        return (tr("PyTorch {version} is installed (with CUDA)") if cuda else
                tr("PyTorch {version} is installed (CPU build)")).format(version=torch)
    modules = {"onnxruntime": ("onnxruntime",), "dask": ("distributed",), "training": ("onnx", "tqdm")}[key]
    found = [version(m) for m in modules if importable(m)]
    if len(found) != len(modules):
        return ""
    return tr("installed: {version}").format(version=", ".join(found)) if all(found) else tr("installed")


def backends(found: dict[str, bool]) -> list[str]:
    """The backend choices that can run here (``auto`` always: it also serves Bicubic)."""
    return ["auto"] + [name for name, module in (("torch", "torch"), ("onnx", "onnxruntime")) if found[module]]


def missing_message(found: dict[str, bool]) -> str:
    """What is missing, for the dock; empty when a learned method can run."""
    if found["torch"] or found["onnxruntime"]:
        return ""
    return tr("Neither PyTorch nor ONNX Runtime is installed in QGIS's Python, so LCMSR, E²DiffSR and Regression "
              "cannot run; Bicubic works. Use “Install dependencies…” to install them into the plugin's folder.")


def cuda_available(backend: str, model: str | None = None) -> bool:
    """Whether the backend that will run for ``backend`` (auto/torch/onnx) and device cuda can really
    use a CUDA GPU: PyTorch sees one, or ONNX Runtime starts a CUDA session (engine.methods.cuda_backend).
    Imports the backend to ask."""
    from ..engine import methods, modelfile
    from ..engine.errors import LatentSRError

    try:
        card = modelfile.read_card(modelfile.resolve(model))
    except LatentSRError:
        card = None
    return methods.cuda_backend(backend, card) is not None


def python_executable() -> str | None:
    """QGIS's own Python interpreter for pip (engine.interpreter: never a ``python3`` that merely comes
    first on PATH, nor the QGIS binary); None when it cannot be found."""
    return interpreter.python_executable()


def requirements(choices: list[str]) -> tuple[list[str], list[str]]:
    """Pinned requirements and extra pip options for the chosen packages (keys of packages())."""
    reqs, options = [], []
    if "torch-cuda" in choices:
        reqs += ["torch=={}".format(TORCH_VERSION), "safetensors=={}".format(SAFETENSORS_VERSION)]
    elif "torch" in choices:
        if platform.system() == "Darwin":
            reqs.append("torch=={}".format(TORCH_VERSION))
        else:
            reqs.append("torch=={}+cpu".format(TORCH_VERSION))
            options += ["--extra-index-url", TORCH_CPU_INDEX]
        reqs.append("safetensors=={}".format(SAFETENSORS_VERSION))
    if "onnxruntime" in choices:
        reqs.append("onnxruntime=={}".format(ONNXRUNTIME_VERSION))
    if "dask" in choices:
        reqs.append("dask[distributed]=={}".format(DASK_VERSION))
    if "training" in choices:
        reqs += ["onnx=={}".format(ONNX_VERSION), "tqdm=={}".format(TQDM_VERSION)]
    return reqs, options


def pip_arguments(choices: list[str], target: str = DEPS_DIR) -> list[str]:
    """Arguments after the interpreter: pip installs the pinned packages into ``target``. ONNX Runtime
    needs numpy; it is kept at QGIS's version (GDAL's bindings are built against it)."""
    reqs, options = requirements(choices)
    args = ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--upgrade", "--target", target]
    if "onnxruntime" in choices and numpy_pin():
        args.append("numpy=={}".format(numpy_pin()))
    return args + options + reqs


def numpy_pin() -> str:
    """The numpy version QGIS runs with (already imported by QGIS's GDAL and Processing)."""
    module = sys.modules.get("numpy")
    return getattr(module, "__version__", "") if module is not None else ""
