"""The arithmetic a training run uses: ``float32``, or ``bf16``, torch.autocast with bfloat16 around
each step's forward passes and losses (the weights, their gradients, the optimizer and the EMA stay
float32; validation runs in float32).

``auto`` takes bf16 where the hardware computes bfloat16 natively: a CUDA GPU for which
torch.cuda.is_bf16_supported(), a CPU whose /proc/cpuinfo flags name amx_bf16 or avx512_bf16 (Linux);
float32 everywhere else. On the 2-core AMD EPYC of docs/TRAINING.md ("Precision"), which has
avx512_bf16 and no AMX, make train's steps ran 1.6x (stage 1) and 1.7x (LCMSR) the samples per second
of float32 with the machine to themselves; on the same machine shared with four other sessions they
had measured 0.4-1.6x. A CPU without either flag would emulate bf16, slower than float32; other
systems' CPUs are not inspected. A run records its precision in its checkpoint and card, and a
resumed run keeps it, so resuming stays exact. Inference's auto (engine.precision) is measured apart.
"""
from __future__ import annotations

import logging

import torch

from engine.precision import BF16_CPU_FLAGS, cpu_flags

from .errors import TrainingError

log = logging.getLogger(__name__)

CHOICES = ("auto", "bf16", "float32")
CPU_FLAGS = BF16_CPU_FLAGS  # the CPU computes bfloat16 natively, and auto takes it (module notes)


def has_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (module notes)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(set(CPU_FLAGS) & cpu_flags())


def choose(choice: str, device: torch.device) -> str:
    """``bf16`` or ``float32`` for a --precision choice on ``device``."""
    if choice not in CHOICES:
        raise TrainingError(f"--precision must be one of {', '.join(CHOICES)}, got '{choice}'")
    if choice == "auto":
        return "bf16" if has_bf16(device) else "float32"
    if choice == "bf16" and not has_bf16(device):
        log.warning("--precision bf16 on %s, which has no bfloat16 units: it is emulated, slower than float32", device)
    return choice


def on_resume(choice: str, saved: str) -> str:
    """The precision of a resumed run: the checkpoint's; an explicit other choice is refused."""
    if choice not in ("auto", saved):
        raise TrainingError(f"the checkpoint was trained in {saved}: resume it with --precision {saved} (or auto), "
                            f"not {choice}, so that it continues exactly")
    return saved


def autocast(device: torch.device, precision: str):
    """The context of a step's forward passes and losses."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
