"""The learned methods: regression, E²DiffSR and LCMSR on one latent backbone, and the choice of backend.

All three run the conditioning net on the bicubic LR to get a latent, turn it into a clean latent
(regression: as is; e2diffsr: an N-step DDPM chain; lcmsr: a 1–4 step consistency sampler), and
decode it with the continuous-scale decoder at the grid's exact output positions.

Bands. A model has a fixed band count m (3 for latentsr-rgb). The input bands are processed in
groups of m consecutive bands (1-3, 4-6, ...); a last group with fewer than m bands is filled by
cycling through its own bands (a single band is repeated m times), and only the outputs of its
real bands are kept. Group g draws its noise from latent channels g·latent .. g·latent+latent-1.

Noise is a fixed function of (seed, sampler step, channel, global latent cell) (engine.noise,
aligned as in engine.models.sampling), so overlapping tiles get the same noise and blend without
seams; the same seed gives the same output.

Backends. ``torch`` runs the networks in PyTorch (LatentMethod below); ``onnx`` runs the graphs that
``python -m training export-onnx`` wrote into the bundle with ONNX Runtime (engine.onnx_backend),
without importing torch. Both draw the same noise and share the samplers below, which work on torch
tensors and numpy arrays alike. ``auto`` follows the CPU benchmark in docs/MODELS.md (see
choose_backend).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

from . import modelfile
from .errors import LatentSRError
from .grid import Grid
from .noise import gaussian
from .schedulers import consistency, ddpm

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
CONTEXT = 16  # LR halo: the decoder's feature branch sees ±10 LR pixels, the latent nets a few cells more
MAX_CONSISTENCY_STEPS = 4


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise LatentSRError("device 'cuda' was requested but backend torch (PyTorch) sees no CUDA GPU: "
                                "use device cpu or auto")
        return torch.device("cuda")
    raise LatentSRError(f"unknown device '{name}': choose one of auto, cpu, cuda")


def band_groups(n: int, bands: int) -> list[list[int]]:
    """Input band indices of each group of ``bands`` (the last one filled by cycling its own bands)."""
    groups = []
    for start in range(0, n, bands):
        real = list(range(start, min(start + bands, n)))
        groups.append([real[k % len(real)] for k in range(bands)])
    return groups


def constant_like(like, value: float):
    """``value`` in the shape, dtype and device of ``like`` (a torch tensor or a numpy array)."""
    if isinstance(like, np.ndarray):
        return np.full_like(like, value)
    import torch

    return torch.full_like(like, value)


def e2diffsr_sample(denoiser, cond, inv_scale, steps: int, noise, betas=ddpm.DEFAULT_BETAS, eta: float = 1.0):
    """Clean latent from an n-step run of the short DDPM chain, starting from pure noise.

    ``noise(k)`` gives a standard normal tensor shaped like ``cond``: k = 0 the start, k ≥ 1 the
    fresh noise of step k. Works on torch tensors (differentiable: training unrolls it) and on
    numpy arrays (the ONNX backend)."""
    abar = ddpm.alphas_bar(betas)
    total = len(abar) - 1
    x = noise(0)
    for k, (t, t_prev) in enumerate(ddpm.chain(total, steps), start=1):
        eps = denoiser(x, cond, constant_like(inv_scale, t / total), inv_scale)
        sigma = ddpm.step_coefficients(abar[t], abar[t_prev], eta)[2]
        x, _ = ddpm.step(x, eps, abar[t], abar[t_prev], noise(k) if sigma > 0 else None, eta)
    return x


def lcmsr_sample(denoiser, cond, inv_scale, steps: int, noise, total: int = consistency.T,
                 sigma_data: float = consistency.SIGMA_DATA):
    """Clean latent from the consistency function: z0 = f(noise, T), then re-noise and call again
    for each further step. ``noise(k)`` as in e2diffsr_sample."""
    x = constant_like(cond, 0.0)
    for k, t in enumerate(consistency.timesteps(steps, total)):
        a, b = consistency.noise_coefficients(t, total)
        z = float(a) * x + float(b) * noise(k)
        f_out = denoiser(z, cond, constant_like(inv_scale, t / total), inv_scale)
        x = consistency.consistency(z, f_out, t, total, sigma_data)
    return x


def latent_noise(seed: int, plan, groups: int, latent: int, step: int) -> np.ndarray:
    """The noise of sampler step ``step`` on a tile's latent (groups, latent, h_lat, w_lat), float32."""
    z = gaussian(seed, np.arange(groups * latent), plan.rows.cells, plan.cols.cells, stream=step)
    return z.reshape(groups, latent, *plan.latent_shape)


def sample_latent(name: str, spec: dict, steps: int, denoiser, cond, inv_scale, noise):
    """The clean (normalised) latent of method ``name`` from its condition: the condition itself for
    regression, else the method's sampler (torch tensors or numpy arrays alike)."""
    if name == "e2diffsr":
        return e2diffsr_sample(denoiser, cond, inv_scale, steps, noise,
                               spec.get("betas", ddpm.DEFAULT_BETAS), spec.get("eta", 1.0))
    if name == "lcmsr":
        return lcmsr_sample(denoiser, cond, inv_scale, steps, noise,
                            spec.get("T", consistency.T), spec.get("sigma_data", consistency.SIGMA_DATA))
    return cond


def ungroup(sr: np.ndarray, groups: list[list[int]], n: int) -> np.ndarray:
    """The n output bands from the per-group outputs ``sr`` (groups, bands, H, W)."""
    out = np.empty((n, *sr.shape[2:]), dtype=np.float32)
    for g, members in enumerate(groups):
        real = sorted(set(members))
        out[real] = sr[g, :len(real)]
    return out


@dataclass
class LatentMethod:
    """A learned SR method over a loaded bundle, run by torch (see the module docstring)."""

    name: str
    nets: dict
    spec: dict  # the card's entry for this method
    bands: int
    latent: int
    steps: int
    seed: int
    device: object
    context: int = CONTEXT

    @property
    def deterministic(self) -> bool:
        return self.name == "regression"

    @property
    def multiple(self) -> int:
        """The latent grid's alignment (the denoiser's downsampling factor)."""
        den = self.nets.get("denoiser")
        return den.multiple if den is not None else 1

    def __call__(self, tile: np.ndarray, grid: Grid) -> np.ndarray:
        import torch

        from .models.sampling import Plan

        n, h, w = tile.shape
        groups = band_groups(n, self.bands)
        plan = Plan.build(h, w, grid, self.multiple)
        t = plan.tensors(self.device)
        lr = torch.from_numpy(np.ascontiguousarray(tile[np.array(groups)], dtype=np.float32)).to(self.device)
        inv_scale = torch.full((len(groups), 1), 1.0 / grid.scale, device=self.device)
        with torch.inference_mode():
            cond = self.nets["condition"](lr, inv_scale, t["hr_y_idx"], t["hr_y_w"], t["hr_x_idx"], t["hr_x_w"])

            def noise(k):
                return torch.from_numpy(latent_noise(self.seed, plan, len(groups), self.latent, k)).to(self.device)

            x0 = sample_latent(self.name, self.spec, self.steps, self.nets.get("denoiser"), cond, inv_scale, noise)
            z = x0 / float(self.spec.get("latent_scale", 1.0))
            sr = self.nets["decoder"](lr, z, inv_scale, t["out_y_idx"], t["out_y_w"], t["out_x_idx"], t["out_x_w"],
                                      t["lat_y_idx"], t["lat_y_w"], t["lat_x_idx"], t["lat_x_w"])
        return ungroup(sr.float().cpu().numpy(), groups, n)


def check_steps(name: str, steps: int | None, spec: dict) -> int:
    if name == "regression":
        return 0
    if name == "e2diffsr":
        top = len(spec.get("betas", ddpm.DEFAULT_BETAS))
    else:
        top = int(spec.get("max_steps", MAX_CONSISTENCY_STEPS))
    steps = int(spec.get("steps", 4 if name == "e2diffsr" else 1)) if steps is None else steps
    if not 1 <= steps <= top:
        raise LatentSRError(f"steps must be between 1 and {top} for {name}, got {steps}")
    return steps


def from_bundle(name: str, card: dict, tensors: dict, steps: int | None = None, seed: int = 0,
                device: str = "auto") -> LatentMethod:
    """The method ``name`` over an already loaded bundle."""
    spec = card.get("methods", {}).get(name)
    if spec is None:
        raise LatentSRError(f"the model '{card.get('name')}' cannot run method '{name}': "
                            f"it has {', '.join(card.get('methods', {})) or 'no methods'}")
    steps = check_steps(name, steps, spec)
    dev = pick_device(device)
    roles = {"decoder": card.get("decoder", "decoder"), "condition": spec["condition"]}
    if name != "regression":
        roles["denoiser"] = spec["denoiser"]
    built = modelfile.build_networks(card, tensors, sorted(set(roles.values())), dev)
    nets = {role: built[net] for role, net in roles.items()}
    return LatentMethod(name, nets, spec, int(card["bands"]), int(card.get("latent", 4)), steps, seed, dev)


def importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
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
    if method == "bicubic":
        return "Bicubic runs with NumPy on the CPU (no backend needed)"
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
    if device == "auto" and cuda is None:
        text += " (a GPU is looked for when the device list is opened)"
    return text


def build_method(name: str, options):
    """Entry point of engine.methods for the learned methods (options: methods.MethodOptions)."""
    card = modelfile.read_card(modelfile.resolve(options.model))
    backend = choose_backend(options.backend, options.device, card)
    if backend == "onnx":
        from . import onnx_backend

        return onnx_backend.build_method(name, options, card)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise LatentSRError("backend 'torch' needs PyTorch, which cannot be imported here: install it, "
                            "or use backend onnx") from None
    card, tensors = modelfile.load(options.model)
    method = from_bundle(name, card, tensors, options.steps, options.seed, options.device)
    log.info("%s: model %s, backend torch on %s, %s", name, card.get("name"), method.device,
             f"{method.steps} step{'s' * (method.steps > 1)}" if method.steps else "one pass")
    return method
