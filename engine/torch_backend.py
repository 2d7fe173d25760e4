"""PyTorch backend of the learned methods: the bundle's networks as torch modules (engine.latent.Networks).

Everything else of a method (band groups, noise, samplers, the per-tile routine) is in engine.latent;
the choice of backend is in engine.methods.
"""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import numpy as np
import torch

from . import modelfile
from .card import Card, MethodSpec
from .errors import LatentSRError
from .models.inputs import ConditionInputs, DecoderInputs, DenoiserInputs


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
    each called with its named inputs (engine.models.inputs) in the order of its forward,
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

    def condition(self, inputs: ConditionInputs) -> torch.Tensor:
        return self.nets["condition"](*inputs)

    def denoiser(self, inputs: DenoiserInputs) -> torch.Tensor:
        return self.nets["denoiser"](*inputs)

    def decoder(self, inputs: DecoderInputs) -> torch.Tensor:
        return self.nets["decoder"](*inputs)


def roles(card: Card, spec: MethodSpec) -> dict:
    """role -> network name of a method's card entry ``spec``, in the order the tile runs through them."""
    out = {"condition": spec.condition}
    if spec.denoiser is not None:
        out["denoiser"] = spec.denoiser
    out["decoder"] = card.decoder
    return out


def networks(card: Card, tensors: dict, spec: MethodSpec, device: str = "auto", chosen: str = "float32") -> TorchNetworks:
    """The networks of the method ``spec`` over an already loaded bundle, in the arithmetic ``chosen``
    (float32 or bf16: engine.methods.run_precision decides it)."""
    dev = pick_device(device)
    names = roles(card, spec)
    built = modelfile.build_networks(card, tensors, sorted(set(names.values())), dev)
    return TorchNetworks({role: built[net] for role, net in names.items()}, dev, chosen)

