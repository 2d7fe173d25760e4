"""The arithmetic a training run uses: ``float32``, or ``bf16``, torch.autocast with bfloat16 around
each step's forward passes and losses (the weights, their gradients, the optimizer and the EMA stay
float32; validation runs in float32).

``auto`` takes bf16 where the hardware has bfloat16 matrix units: a CUDA GPU for which
torch.cuda.is_bf16_supported(), a CPU whose /proc/cpuinfo flags name amx_bf16 (Linux); float32
everywhere else. A CPU with only avx512_bf16 computes bf16 natively, but on the 2-core AMD EPYC
measured in docs/TRAINING.md ("Precision") a make-train step under bf16 was not reliably faster than
float32 (0.4-1.6x, median 1.02x for stage 1), so auto keeps float32 there and ``--precision bf16``
asks for it. A CPU without either would emulate bf16, slower than float32; other systems' CPUs are
not inspected. A run records its precision in its checkpoint and card, and
a resumed run keeps it, so resuming stays exact.
"""
from __future__ import annotations

import logging

import torch

from engine.precision import BF16_CPU_FLAGS, cpu_flags

from .errors import TrainingError

log = logging.getLogger(__name__)

CHOICES = ("auto", "bf16", "float32")
CPU_FLAGS = BF16_CPU_FLAGS  # the CPU computes bfloat16 natively
AUTO_CPU_FLAGS = ("amx_bf16",)  # ... and fast enough for auto to take it (module notes)


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
        fast = has_bf16(device) if device.type == "cuda" else bool(set(AUTO_CPU_FLAGS) & cpu_flags())
        return "bf16" if fast else "float32"
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
