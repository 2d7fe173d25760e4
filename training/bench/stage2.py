"""A stage-2 run judged before it is bundled (python -m training.bench stage2 --stage1 DIR --stage2 DIR).

On centre crops of validation images, with the bench's degradation (antialiased bicubic) and LSD:
- per scale, ΔPSNR over bicubic and LSD of the true latent (stage 1: the latent's worth), of the
  regression path (D = 0) and of the method's samples at each detail D; the per-pixel spread of two
  seeds at D = 1 (DN, from their mean absolute difference);
- whether the samples spread where the texture is, at ×4 and D = 1 with 4 seeds: the pooled
  correlation between the per-pixel std and the error of the samples' mean, and the mean std on the
  left half of each crop against its right half set to one colour (a flat LR, where nothing is
  uncertain).
Each crop's border of ceil(scale) pixels is left out of every measure.
"""
from __future__ import annotations

import argparse
import logging
import math

import numpy as np
import torch

from engine import metrics, modelfile
from engine.latent import run_tile
from engine.registry import BICUBIC, REGISTRY, STOCHASTIC
from engine.torch_backend import TorchNetworks

from .. import data
from ..batch import make_pair
from ..errors import TrainingError
from ..trainer import psnr

log = logging.getLogger(__name__)

SPREAD_SCALE = 4.0
SPREAD_SEEDS = 4


def lsd(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Per-image LSD (dB) of [0, 1] batches, in 8-bit units as the bench measures it."""
    return torch.tensor([metrics.lsd(a.clamp(0, 1).double().numpy() * 255, b.double().numpy() * 255) for a, b in zip(sr, hr)])


class Runs:
    """The frozen stage-1 encoder and decoder and a stage-2 run's networks (CPU, no gradients), run as
    the engine runs them (engine.latent.run_tile) with the card entry the bundle would carry."""

    def __init__(self, stage1: str, stage2: str):
        card1, t1 = modelfile.load(stage1)
        card2, t2 = modelfile.load(stage2)
        if card1.kind != "stage1" or card2.kind not in STOCHASTIC:
            raise TrainingError("--stage1 and --stage2 must be the output folders of a stage-1 and a stage-2 run")
        trained = "decoder" in card2.networks  # a run with --train-decoder: its own decoder
        nets = modelfile.build_networks(card1, t1, ["encoder"] if trained else ["encoder", "decoder"], "cpu")
        nets.update(modelfile.build_networks(card2, t2, ["condition", "denoiser"] + (["decoder"] if trained else []), "cpu"))
        self.nets, self.spec, self.kind = nets, card2.stage, card2.kind
        self.networks = TorchNetworks({role: nets[role] for role in ("condition", "denoiser", "decoder")},
                                      torch.device("cpu"))

    def run(self, pair, seed: int, detail: float) -> torch.Tensor:
        """The SR of a batch at ``detail``, with torch's noise of ``seed``."""
        g = torch.Generator().manual_seed(seed)
        shape = pair.latent_shape(self.spec.latent)

        def noise(k):
            return torch.randn(shape, generator=g)

        return run_tile(self.networks, REGISTRY[self.kind], self.spec, self.spec.steps, pair.arrays, noise,
                        detail)


@torch.no_grad()
def quality(runs: Runs, hr: torch.Tensor, scale: float, details, batch: int) -> tuple[dict, float]:
    """Mean ΔPSNR and LSD per row, and the two-seed spread at D = 1 (DN)."""
    rows, spread = {}, []
    b = math.ceil(scale)
    for i in range(0, len(hr), batch):
        pair = make_pair(hr[i:i + batch], scale, 4)

        def add(label, sr):
            rows.setdefault(label, []).append(torch.stack([psnr(sr, pair.hr, b),
                                                           lsd(sr[..., b:-b, b:-b], pair.hr[..., b:-b, b:-b])], 1))

        add(BICUBIC.name, pair.lr_up)
        add("stage 1, true latent", runs.nets["decoder"](*pair.decoder_inputs(runs.nets["encoder"](pair.hr, pair.lr_up))))
        add("regression (D = 0)", runs.run(pair, 0, 0.0))
        for d in details:
            add(f"{runs.kind}, D = {d:g}", runs.run(pair, 0, d))
        a, c = (runs.run(pair, seed, 1.0).clamp(0, 1) * 255 for seed in (0, 1))
        spread.append(float((a - c)[..., b:-b, b:-b].abs().mean()) * math.sqrt(math.pi) / 2)
    means = {k: torch.cat(v).mean(0) for k, v in rows.items()}
    base = means[BICUBIC.name][0]
    return {k: (float(m[0] - base), float(m[1])) for k, m in means.items()}, float(np.mean(spread))


@torch.no_grad()
def spread_follows_texture(runs: Runs, hr: torch.Tensor, batch: int) -> tuple[float, float, float]:
    """(pooled correlation of std and |error of the mean|, mean std on the textured halves, on the flat halves)."""
    b = math.ceil(SPREAD_SCALE)
    half = hr.clone()
    w = hr.shape[-1]
    half[..., w // 2:] = hr.mean((2, 3), keepdim=True)
    stds, errors, textured, flat = [], [], [], []
    for images, pooled in ((hr, True), (half, False)):
        for i in range(0, len(images), batch):
            pair = make_pair(images[i:i + batch], SPREAD_SCALE, 4)
            out = torch.stack([runs.run(pair, seed, 1.0).clamp(0, 1) * 255 for seed in range(SPREAD_SEEDS)])
            std = out.std(0)[..., b:-b, b:-b]
            if pooled:
                stds.append(std.flatten())
                errors.append((out.mean(0) - pair.hr * 255)[..., b:-b, b:-b].abs().flatten())
            else:
                textured.append(std[..., : w // 2 - 2 * b].mean())
                flat.append(std[..., w // 2:].mean())
    corr = float(np.corrcoef(torch.cat(stds).numpy(), torch.cat(errors).numpy())[0, 1])
    return corr, float(torch.stack(textured).mean()), float(torch.stack(flat).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench stage2", description=__doc__.splitlines()[0])
    ap.add_argument("--stage1", required=True, help="the stage-1 run folder")
    ap.add_argument("--stage2", required=True, help="the LCMSR or E²DiffSR run folder")
    ap.add_argument("--val", default="../shared/data/ucmerced/val", help="validation images (default %(default)s)")
    ap.add_argument("--images", type=int, default=18, help="images, drawn with a fixed seed (default %(default)s)")
    ap.add_argument("--crop", type=int, default=192, help="centre crop side, a multiple of 32 (default %(default)s)")
    ap.add_argument("--scales", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--details", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs = Runs(args.stage1, args.stage2)
        files = data.list_images(args.val)
        if not files:
            raise TrainingError(f"no images in {args.val}")
        pick = np.random.default_rng(0).choice(len(files), min(args.images, len(files)), replace=False)
        files = [files[i] for i in sorted(pick)]
        hr = torch.from_numpy(data.centre_crops(files, args.crop, 3, len(files)))
    except (TrainingError, OSError, ValueError) as e:
        log.error("error: %s", e)
        return 2
    batch = 6
    log.info("%d images of %s, %d² centre crops; ΔPSNR over bicubic (dB) / LSD (dB)", len(files), args.val, args.crop)
    for scale in args.scales:
        rows, spread = quality(runs, hr, scale, args.details, batch)
        for label, (gain, distance) in rows.items():
            log.info("×%g  %-26s %+6.2f / %5.2f", scale, label, gain, distance)
        log.info("×%g  spread of two seeds at D = 1: %.2f DN", scale, spread)
    corr, textured, flat = spread_follows_texture(runs, hr, batch)
    log.info("×%g, D = 1, %d seeds: corr(std, |error|) %.3f; std %.2f DN on texture, %.2f DN on a flat half",
             SPREAD_SCALE, SPREAD_SEEDS, corr, textured, flat)
    return 0
