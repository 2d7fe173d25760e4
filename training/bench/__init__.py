"""The benchmarks, one entry point: ``python -m training.bench KIND [options]`` (``make bench`` runs them).

- ``quality``: PSNR, SSIM, ERGAS, SAM, consistency PSNR, HF ratio and timing of every method on the
  UC Merced validation images, the uncertainty calibration of each diffusion method and the comparison
  picture (docs/BENCHMARKS.md);
- ``backends``: ONNX Runtime against torch eager on CPU, time and peak RSS per method, each in its own process;
- ``scale``: memory and time of the engine CLI against raster size;
- ``speed``: parameters and time per LR tile of each method with random weights;
- ``cluster``: ``--cluster`` on one machine (workers of one and two cores), the overhead of a block, and a scaling model;
- ``stage2``: a stage-2 run judged before it is bundled: detail and fidelity at each D, and whether its samples
  spread where the texture is;
- ``step``: where a training step's time goes (data, each network's forward and backward, the critic, the
  optimizer) for make train's stage-1 and LCMSR recipes, in float32 and bf16, with and without channels_last;
- ``precision``: float32, int8 (ONNX Runtime quantisation) and bf16 (torch) inference on this CPU: speed, and PSNR
  and LSD on val against float32;
- ``zoom``: zoomed crops of a roof and a tree canopy at ×4 (LR, bicubic, LCMSR at D = 0, the card's default and 1,
  RealSR DF2K, HR), docs/zoom.png;
- ``parts``: which part of the decoder (LR branch, detail path, output-resolution synthesis) makes the detail a
  one-step sample adds, and each part's lattice figure.

The benchmark owns its processes, so, like the engine CLI and qgis_process, it fixes glibc's mmap
threshold (engine/allocator.py) before it builds any method.
"""
from __future__ import annotations

import importlib
import sys

from engine.allocator import fix_mmap_threshold

KINDS = ("quality", "backends", "scale", "speed", "cluster", "stage2", "step", "precision", "zoom", "parts")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in KINDS:
        print(f"usage: python -m training.bench {{{','.join(KINDS)}}} [options]", file=sys.stderr)
        return 2
    fix_mmap_threshold()
    return importlib.import_module(f"{__name__}.{argv[0]}").main(argv[1:])
