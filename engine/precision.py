"""The arithmetic a learned method runs in: ``float32``, the exact path, or ``bf16``, the torch backend
under torch.autocast(bfloat16) with its networks in channels_last (the weights stay float32).

The quality limits are issue 27's: at most 0.05 dB of PSNR and 0.1 dB of LSD lost at ×4 on val
(``python -m training.bench precision``, docs/BENCHMARKS.md "Precision"). bf16 keeps well within them
for regression and LCMSR. ``--precision auto`` (the default) takes bf16 for the torch backend on a CPU
with AMX (amx_bf16 in Linux's /proc/cpuinfo; other systems' CPUs are not inspected). On the CPU
measured, an AMD EPYC with avx512_bf16 but no AMX, bf16 was 1.2-1.5x faster than torch in float32 and
2.5x slower than ONNX Runtime in float32, which backend auto runs there, so auto keeps float32 on it
and ``--precision bf16`` asks for bf16 (training's auto, which has no ONNX Runtime to weigh, takes bf16
there: training.precision). ONNX Runtime runs
float32 only: its CPU provider has no bfloat16 kernels for Conv, MatMul or Mul, and its int8
quantisation (dynamic, or static QDQ calibrated on training crops) was slower than its float32 graphs
(0.4-0.7x; 1.03x for LCMSR's static QDQ, within the load's noise, with LSD moved by 0.17 dB), because
these networks spend most of their time in the continuous-scale resampling (gathers and elementwise
work), not in convolutions. A GPU runs float32 (its bf16 was not measured). ``--precision float32``
is the exact path, the one the tests and the ONNX export compare.
"""
from __future__ import annotations

import logging

from .errors import LatentSRError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # the CPU computes bfloat16 natively
AUTO_CPU_FLAGS = ("amx_bf16",)  # ... and fast enough for auto to take it (module notes)
CPUINFO = "/proc/cpuinfo"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open(CPUINFO) as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def check(choice: str) -> None:
    if choice not in PRECISIONS:
        raise LatentSRError(f"unknown precision '{choice}': choose one of {', '.join(PRECISIONS)}")


def choose(choice: str, backend: str, device: str) -> str:
    """``float32`` or ``bf16`` for a precision choice on ``backend`` (torch or onnx, as chosen) running
    on ``device`` (cpu or cuda, as chosen); a LatentSRError for a choice that backend cannot run."""
    check(choice)
    if backend != "torch":
        if choice == "bf16":
            raise LatentSRError("precision bf16 needs backend torch: ONNX Runtime has no bfloat16 kernels on the CPU "
                                "(use --backend torch, or precision auto or float32)")
        return "float32"
    flags = cpu_flags() if device == "cpu" else set()
    if choice == "auto":
        return "bf16" if set(AUTO_CPU_FLAGS) & flags else "float32"
    if choice == "bf16" and device == "cpu" and not set(BF16_CPU_FLAGS) & flags:
        log.warning("precision bf16 on a CPU without bfloat16 units: it is emulated, slower than float32")
    return choice
