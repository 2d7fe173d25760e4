"""Which part of the decoder makes the detail a sample adds, and its lattice (python -m training.bench parts).

On the first IMAGES val images (the quality bench's order and degradation), LCMSR (1 step) runs at
D = 0 and D = 1 with the same seed through the torch backend; the decoder's inputs of both runs are
kept, and each part of the decoder is run on each: the LR branch with its pyramid and tail, the
detail path, the output-resolution synthesis (engine.models.decoder). A part's added detail is its
output at the D = 1 latent minus its output at the D = 0 latent, and for it the table gives the
lattice figure (engine.metrics.lattice: power at the LR pixel frequency and its harmonics against
the bins next to them, dB; 0: no peak) and its rms in DN (8-bit), the mean over the images, with
the whole decoder's (the sum of the parts) and HR's own figure (HR − the D = 0 output) beside them.
The synthesis is also run with only its latent input changed and with only the pyramid's.
Each image's border of ceil(scale) pixels is left out.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch

from engine import metrics, modelfile
from engine.grid import Grid
from engine.methods import from_bundle
from engine.registry import LCMSR

from .quality import hr_lr, images

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
VAL = ROOT.parent / "shared" / "data" / "ucmerced" / "val"


NAMES = {"tail": "LR branch, pyramid and tail", "detail": "detail path", "synth": "synthesis"}


def part_outputs(dec, a) -> tuple[dict, torch.Tensor]:
    """Each part's output (channels first, one image) for the decoder inputs ``a``
    (engine.models.decoder.Decoder.parts), by the table's names, and the pyramid's features."""
    out, acc = dec.parts(*a)
    return {NAMES[k]: v[0].permute(2, 0, 1) for k, v in out.items()}, acc


def synth_output(dec, a, acc) -> torch.Tensor:
    """The synthesis for the latent of ``a`` and the pyramid's features ``acc`` (channels first, one image),
    times the gate's gain when the decoder has one."""
    out = dec.synth_map(a.z, acc, a.out_y_idx, a.out_y_w, a.out_x_idx, a.out_x_w)
    return (out if dec.gate is None else out * dec.gain(acc))[0].permute(2, 0, 1)


def image_parts(method, hr: np.ndarray, lr: np.ndarray, scale: float, seed: int) -> dict[str, tuple[float, float]]:
    """(lattice dB, rms DN) of each part's added detail on one image (module notes)."""
    grid = Grid.whole(lr.shape[1], lr.shape[2], scale)
    kept, call = [], method.nets.decoder
    method.nets.decoder = lambda inputs: (kept.append(inputs), call(inputs))[1]
    try:
        outs = {}
        for d in (0.0, 1.0):
            method.detail = d
            outs[d] = method(lr, grid, seed)
    finally:
        method.nets.decoder = call
    dec = method.nets.nets["decoder"]
    a0, a1 = kept
    with torch.inference_mode():
        p0, acc0 = part_outputs(dec, a0)
        p1, acc1 = part_outputs(dec, a1)
        added = {k: (p1[k] - p0[k]).numpy() for k in p0}
        added["whole decoder"] = sum(added.values())
        if dec.synth is not None:
            s0 = p0["synthesis"]
            added["synthesis, its latent input only"] = (synth_output(dec, a1, acc0) - s0).numpy()
            added["synthesis, the pyramid's input only"] = (synth_output(dec, a0, acc1) - s0).numpy()
    b = math.ceil(scale)
    ref = hr[:, :outs[0.0].shape[1], :outs[0.0].shape[2]].astype(np.float64) / 255.0
    added["HR − D = 0 (HR's own)"] = ref - outs[0.0]
    return {k: (metrics.lattice(metrics.crop_border(v, b), scale), float(np.sqrt(np.mean(metrics.crop_border(v, b) ** 2))) * 255)
            for k, v in added.items()}


def table(rows: dict[str, list[tuple[float, float]]]) -> str:
    lines = ["| added detail (D = 1 − D = 0) | lattice (dB) | rms (DN) |", "|---|---:|---:|"]
    for name, values in rows.items():
        lattice, rms = np.array(values).T
        finite = lattice[np.isfinite(lattice)]  # NaN: a part that adds nothing (e.g. a detail path that reads no latent)
        lines.append(f"| {name} | {f'{finite.mean():.2f}' if finite.size else '—'} | {rms.mean():.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench parts", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model name or folder (default: the bundled default)")
    ap.add_argument("--val", type=Path, default=VAL)
    ap.add_argument("--images", type=int, default=6, help="the first N of the quality bench's 42 (default %(default)s)")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    card, tensors = modelfile.load(str(modelfile.resolve(args.model)))
    method = from_bundle(LCMSR.name, card, tensors, 1, "cpu")
    rows: dict[str, list] = {}
    for path in images(args.val, None, 42)[:args.images]:
        hr, lr = hr_lr(path, args.scale)
        for name, value in image_parts(method, hr, lr, args.scale, args.seed).items():
            rows.setdefault(name, []).append(value)
    log.info("%s, LCMSR 1 step, ×%g, seed %d, %d images:\n\n%s\n", card.name, args.scale, args.seed, args.images,
             table(rows))
    return 0
