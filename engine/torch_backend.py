"""PyTorch backend of the learned methods: the bundle's networks as torch modules (engine.latent.Networks).

Everything else of a method (band groups, noise, samplers, the per-tile routine) is in engine.latent;
the choice of backend is in engine.methods.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import torch

from . import modelfile
from .card import Card, MethodSpec
from .errors import LatentSRError


def pick_device(name: str) -> torch.device:
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


class TorchNetworks:
    """The networks of one method (roles decoder, condition and, for the diffusion methods, denoiser)."""

    backend = "torch"
    fused = None

    def __init__(self, nets: dict, device: torch.device):
        self.nets, self.device = nets, device

    @property
    def where(self) -> str:
        return f"backend torch on {self.device}"

    def array(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device)

    def numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.float().cpu().numpy()

    def running(self) -> AbstractContextManager:
        return torch.inference_mode()

    def condition(self, a: dict) -> torch.Tensor:
        return self.nets["condition"](a["lr"], a["inv_scale"], a["hr_y_idx"], a["hr_y_w"], a["hr_x_idx"], a["hr_x_w"])

    def denoiser(self, z_t, cond, t_frac, inv_scale) -> torch.Tensor:
        return self.nets["denoiser"](z_t, cond, t_frac, inv_scale)

    def decoder(self, a: dict, z) -> torch.Tensor:
        return self.nets["decoder"](a["lr"], z, a["inv_scale"], a["out_y_idx"], a["out_y_w"], a["out_x_idx"],
                                    a["out_x_w"], a["lat_y_idx"], a["lat_y_w"], a["lat_x_idx"], a["lat_x_w"])


def roles(card: Card, spec: MethodSpec) -> dict:
    """role -> network name of a method's card entry ``spec``, in the order the tile runs through them."""
    out = {"condition": spec.condition}
    if spec.denoiser is not None:
        out["denoiser"] = spec.denoiser
    out["decoder"] = card.decoder
    return out


def networks(card: Card, tensors: dict, spec: MethodSpec, device: str = "auto") -> TorchNetworks:
    """The networks of the method ``spec`` over an already loaded bundle."""
    dev = pick_device(device)
    names = roles(card, spec)
    built = modelfile.build_networks(card, tensors, sorted(set(names.values())), dev)
    return TorchNetworks({role: built[net] for role, net in names.items()}, dev)

