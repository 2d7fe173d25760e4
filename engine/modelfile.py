"""Model bundles: one safetensors weights file plus a JSON model card, in one folder.

The card (model.json) holds the format version, the networks (kind + constructor config), the
methods the bundle can run and which networks each uses, the bands, the scale range, the input
normalisation, where the training data came from, and the SHA-256 of the weights file. Weight
names are ``<network>.<parameter>``. The checksum is verified before anything is parsed, and the
weights are read with safetensors only (never pickle, never torch.load).

Bundles are looked up by name in resources/models/<name>/ (resources/ beside engine/), or given
as a folder path. Without either, the bundle named by the environment variable LATENTSR_MODEL is used,
else latentsr-rgb.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from .errors import LatentSRError
from .models import KINDS
from .schedulers import ddpm

FORMAT = "latentsr-model"
VERSION = 1
CARD = "model.json"
WEIGHTS = "model.safetensors"
DEFAULT_MODEL = "latentsr-rgb"
MODEL_ENV = "LATENTSR_MODEL"
MODELS_DIR = Path(__file__).resolve().parent.parent / "resources" / "models"


def resolve(ref: str | os.PathLike | None) -> Path:
    """The folder of a bundle given by name (under resources/models) or by path; None means the
    environment variable LATENTSR_MODEL (a name or a path) when it is set, else the default model."""
    ref = (os.environ.get(MODEL_ENV) or DEFAULT_MODEL) if ref is None else str(ref)
    path = Path(ref).expanduser()
    if os.sep in ref or (os.altsep and os.altsep in ref) or path.is_dir():
        if not (path / CARD).is_file():
            raise LatentSRError(f"no model found in '{ref}': the folder needs {CARD} and {WEIGHTS}")
        return path
    path = MODELS_DIR / ref
    if not (path / CARD).is_file():
        raise LatentSRError(f"no bundled model '{ref}' found in resources/models: train one with `make train` "
                            f"or pass a model folder")
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_card(folder: Path) -> dict:
    try:
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LatentSRError(f"cannot read the model card {folder / CARD}: {e}") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise LatentSRError(f"{folder / CARD} is not a LatentSR model card")
    if card.get("version") != VERSION:
        raise LatentSRError(f"{folder / CARD} has format version {card.get('version')}, this LatentSR reads version {VERSION}")
    problem = card_problem(card)
    if problem:
        raise LatentSRError(f"the model card {folder / CARD} is not valid: {problem}")
    return card


METHOD_NETWORKS = {"lcmsr": ("condition", "denoiser"), "e2diffsr": ("condition", "denoiser"), "regression": ("condition",)}


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def card_problem(card: dict) -> str | None:
    """What is wrong with a model card's values, naming the field, or None: bands and latent are
    whole numbers ≥ 1; every network has a known kind, a config, and the card's band count; every
    method is known, names networks the card has, and has a finite latent_scale > 0; E²DiffSR's
    prediction is ε or z0."""
    for key in ("bands", "latent"):
        if key in card or key == "bands":
            if not positive_int(card.get(key)):
                return f"'{key}' must be a whole number of at least 1, got {card.get(key)!r}"
    networks = card.get("networks")
    if not isinstance(networks, dict) or not networks:
        return "'networks' must name at least one network"
    for name, spec in networks.items():
        if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
            kind = spec.get("kind") if isinstance(spec, dict) else spec
            return f"'networks.{name}.kind' must be one of {', '.join(KINDS)}, got {kind!r}"
        if not isinstance(spec.get("config"), dict):
            return f"'networks.{name}.config' must be an object"
        bands = spec["config"].get("bands", card["bands"])
        if bands != card["bands"]:
            return f"'networks.{name}.config.bands' is {bands!r} but the card's 'bands' is {card['bands']}"
    methods = card.get("methods", {})  # a stage 1 bundle has none
    if not isinstance(methods, dict):
        return "'methods' must be an object"
    for name, spec in methods.items():
        if name not in METHOD_NETWORKS:
            return f"'methods.{name}' is not a known method (known: {', '.join(METHOD_NETWORKS)})"
        if not isinstance(spec, dict):
            return f"'methods.{name}' must be an object"
        for role in METHOD_NETWORKS[name]:
            if spec.get(role) not in networks:
                return f"'methods.{name}.{role}' names the network {spec.get(role)!r}, which is not in 'networks'"
        if name == "e2diffsr" and spec.get("prediction", "eps") not in ddpm.PREDICTIONS:
            return f"'methods.e2diffsr.prediction' must be one of {', '.join(ddpm.PREDICTIONS)}, got {spec['prediction']!r}"
        scale = spec.get("latent_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            return f"'methods.{name}.latent_scale' must be a finite number greater than 0, got {scale!r}"
    return None


def load(ref: str | os.PathLike | None) -> tuple[dict, dict]:
    """(card, {name: torch tensor}) of a bundle, after checking the weights' SHA-256."""
    from safetensors.torch import load as load_safetensors

    folder = resolve(ref)
    card = read_card(folder)
    try:
        data = (folder / WEIGHTS).read_bytes()
    except OSError as e:
        raise LatentSRError(f"cannot read the model weights {folder / WEIGHTS}: {e.strerror}") from None
    expected = card.get("weights", {}).get("sha256")
    if sha256(data) != expected:
        raise LatentSRError(f"the weights in {folder / WEIGHTS} do not match the SHA-256 in the model card: "
                            f"the file is damaged or was changed")
    try:
        return card, load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise LatentSRError(f"cannot read the model weights {folder / WEIGHTS}: {e}") from None


def save(folder: str | os.PathLike, card: dict, tensors: dict) -> Path:
    """Write ``tensors`` (name -> torch tensor) and ``card`` (its checksum filled in) to ``folder``."""
    from safetensors.torch import save as save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    card = dict(card, format=FORMAT, version=VERSION, weights={"file": WEIGHTS, "sha256": sha256(data)})
    tmp_w = folder / (WEIGHTS + ".tmp")
    tmp_w.write_bytes(data)
    os.replace(tmp_w, folder / WEIGHTS)
    write_card(folder, card)
    return folder


def write_card(folder: Path, card: dict) -> None:
    """Write ``card`` as the bundle's model.json (replaced at once, never half-written)."""
    tmp = folder / (CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / CARD)


def safetensors_index(data: bytes) -> dict[str, tuple[str, list[int], int, int]]:
    """name -> (dtype, shape, absolute offset, length in bytes) of each tensor in a safetensors file."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    return {name: (info["dtype"], info["shape"], 8 + size + info["data_offsets"][0],
                   info["data_offsets"][1] - info["data_offsets"][0])
            for name, info in header.items() if name != "__metadata__"}


def network_tensors(tensors: dict, network: str) -> dict:
    """The state dict of one network out of a bundle's tensors."""
    prefix = network + "."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def build_networks(card: dict, tensors: dict, names, device) -> dict:
    """The named networks of a bundle, built from the card and loaded with their weights."""
    from .models import build

    nets = {}
    for name in names:
        spec = card.get("networks", {}).get(name)
        if spec is None:
            raise LatentSRError(f"the model '{card.get('name')}' has no network '{name}'")
        net = build(spec["kind"], spec["config"])
        try:
            net.load_state_dict(network_tensors(tensors, name), strict=True)
        except RuntimeError as e:
            raise LatentSRError(f"the weights of network '{name}' do not fit its configuration: "
                                f"{str(e).splitlines()[0]}") from None
        nets[name] = net.to(device).eval()
    return nets
