"""PyTorch backend of the learned methods: the bundle's networks as torch modules (engine.latent.Networks).

Everything else of a method (band groups, noise, samplers, the per-tile routine) is in engine.latent;
the choice of backend is in engine.methods.
"""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import numpy as np
import torch

from . import modelfile, precision
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
    """The networks of one method (roles decoder, condition and, for the diffusion methods, denoiser),
    run in ``precision`` (engine.precision): bf16 under autocast, with the networks in channels_last."""

    backend = "torch"
    fused = None

    def __init__(self, nets: dict, device: torch.device, precision: str = "float32"):
        self.nets, self.device, self.precision = nets, device, precision
        if precision == "bf16":
            for net in nets.values():
                net.to(memory_format=torch.channels_last)

    @property
    def where(self) -> str:
        return f"backend torch on {self.device}, {self.precision}"

    def array(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device)

    def numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.float().cpu().numpy()

    def running(self) -> AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        return stack

    def condition(self, a: dict) -> torch.Tensor:
        return self.nets["condition"](a["lr"], a["inv_scale"], a["hr_y_idx"], a["hr_y_w"], a["hr_x_idx"], a["hr_x_w"])

    def denoiser(self, z_t, cond, t_frac, inv_scale) -> torch.Tensor:
        return self.nets["denoiser"](z_t, cond, t_frac, inv_scale)

    def decoder(self, a: dict, z) -> torch.Tensor:
        return self.nets["decoder"](a["lr"], z, a["inv_scale"], a["out_y_idx"], a["out_y_w"], a["out_x_idx"],
                                    a["out_x_w"], a["lat_y_idx"], a["lat_y_w"], a["lat_x_idx"], a["lat_x_w"])


def roles(card: dict, spec: dict) -> dict:
    """role -> network name of a method's card entry ``spec``, in the order the tile runs through them."""
    out = {"condition": spec["condition"]}
    if "denoiser" in spec:
        out["denoiser"] = spec["denoiser"]
    out["decoder"] = card.get("decoder", "decoder")
    return out


def networks(card: dict, tensors: dict, spec: dict, device: str = "auto", choice: str = "float32") -> TorchNetworks:
    """The networks of the method ``spec`` over an already loaded bundle, in the precision ``choice``
    (engine.precision) gives on the device."""
    dev = pick_device(device)
    names = roles(card, spec)
    built = modelfile.build_networks(card, tensors, sorted(set(names.values())), dev)
    return TorchNetworks({role: built[net] for role, net in names.items()}, dev,
                         precision.choose(choice, "torch", dev.type))

