"""Speed benchmark: parameters and time per LR tile of each learned method, randomly initialised
(python -m training.bench speed)."""
from __future__ import annotations

import logging
import statistics
import time

import numpy as np
import torch

from engine.grid import Grid
from engine.models.layers import count_parameters
from engine.methods import from_bundle
from engine.registry import E2DIFFSR, LCMSR, REGRESSION

from ..bundle import random_bundle

log = logging.getLogger(__name__)

METHODS = ((REGRESSION.name, None), (LCMSR.name, 1), (E2DIFFSR.name, 4))


def run(tile: int = 256, scale: float = 4.0, repeats: int = 3, device: str = "cpu", preset: str = "default",
        threads: int | None = None) -> list[dict]:
    """Rows of {method, steps, parameters, seconds} (median of ``repeats`` timed runs after a warm-up)."""
    if threads:
        torch.set_num_threads(threads)
    card, tensors = random_bundle(preset)
    x = np.random.default_rng(0).random((card.bands, tile, tile), dtype=np.float32)
    grid = Grid.whole(tile, tile, scale)
    log.info("%s models, %d×%d LR tile at ×%g -> %d×%d, %s, %d threads", preset, tile, tile, scale, *grid.shape,
             device, torch.get_num_threads())
    for net_name, spec in card.networks.items():
        if not net_name.startswith("e2diffsr."):
            log.info("  %-18s %-9s %9d parameters", net_name, spec.kind, sum(
                v.numel() for k, v in tensors.items() if k.startswith(net_name + ".")))
    rows = []
    for name, steps in METHODS:
        method = from_bundle(name, card, tensors, steps=steps, device=device)
        params = sum(count_parameters(m) for m in method.nets.nets.values())
        method(x, grid)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            method(x, grid)
            if method.nets.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows.append({"method": name, "steps": steps or 0, "parameters": params, "seconds": statistics.median(times)})
        log.info("  %-10s %s  %9d parameters  %7.3f s per tile", name, f"{steps} step{'s' * (steps > 1)}" if steps else "1 pass ",
                 params, rows[-1]["seconds"])
    return rows


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training.bench speed", description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(args.tile, args.scale, args.repeats, args.device, args.preset, args.threads)
    return 0
