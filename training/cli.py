"""Command line: python -m training stage1|e2diffsr|lcmsr|add|add-e2diffsr|finetune|bundle|export-onnx (the benchmarks:
python -m training.bench)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from engine.cli import band_list
from engine.errors import LatentSRError, single_line
from engine.modelfile import DEFAULT_MODEL, MODELS_DIR
from engine.models import LATENT
from engine.registry import E2DIFFSR, LCMSR

from . import recipe
from .errors import Interrupted, TrainingError

ADD = "add"  # LCMSR's stage after stage 2: its decoder trained on the decoded one-step samples (training.lcmsr.ADDStage)
ADD_E2DIFFSR = "add-e2diffsr"  # E²DiffSR's networks trained through that decoder (training.e2diffsr.AddE2DiffSRStage)
STAGES = {"stage1": recipe.STAGE1, E2DIFFSR.name: recipe.STAGE2, LCMSR.name: recipe.STAGE2, ADD: recipe.ADD,
          ADD_E2DIFFSR: recipe.ADD_E2DIFFSR}  # their defaults


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (``error: ...``, exit code 2)."""

    def error(self, message: str):
        raise TrainingError(f"{self.prog}: {message}")


def _train_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    d, o, run = STAGES[name], STAGES[name]["options"], recipe.RUN
    p = sub.add_parser(name, help=help_text)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="folder of training images (PNG, WebP, TIFF, GeoTIFF; searched recursively)")
    source.add_argument("--rasters", nargs="+", metavar="PATH",
                        help="GDAL rasters or folders of them: random windows that avoid nodata, normalised as inference "
                             "normalises them (whole-raster statistics, recorded in the card)")
    p.add_argument("--raster-bands", type=band_list, metavar="1,2,3", help="with --rasters: the bands to train on (default all)")
    p.add_argument("--val", nargs="+", help="folder of validation images; with --rasters, validation rasters "
                                            "(default: the last rows of the training rasters, held back)")
    p.add_argument("--out", required=True, help="run folder: checkpoint, curves.png, and the stage's model.json/model.safetensors")
    p.add_argument("--steps", type=int, default=d["steps"], help="train up to this step (default %(default)s)")
    p.add_argument("--schedule-steps", type=int, help="horizon of the cosine LR schedule (default: --steps of the first run)")
    p.add_argument("--batch", type=int, default=run["batch"])
    p.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d.get("warmup", run["warmup"]), help="linear warmup steps (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--ckpt-every", type=int, default=run["ckpt_every"])
    p.add_argument("--val-every", type=int, default=run["val_every"])
    p.add_argument("--crop", type=int, default=run["crop"], help="HR crop size, a multiple of 32 (default %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--seed", type=int, default=run["seed"])
    p.add_argument("--scales", type=float, nargs=2, default=run["scales"], metavar=("MIN", "MAX"),
                   help="range of the per-batch scale (default 1 8)")
    p.add_argument("--ema-decay", type=float, default=run["ema_decay"])
    p.add_argument("--val-images", type=int, default=run["val_images"])
    p.add_argument("--val-crop", type=int, default=run["val_crop"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--preset", default="default", help="network sizes: default, small or tiny")
    p.add_argument("--guard", type=float, default=d.get("guard", 0.0), metavar="FACTOR",
                   help="skip an update whose gradient norm is over FACTOR times the median of the last 200 "
                        "(training.spikes; 0: off, default %(default)s)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "float32"),
                   help="bf16: autocast to bfloat16 in the steps' forward passes; auto (default): bf16 on a CPU "
                        "with bfloat16 units (amx_bf16 or avx512_bf16) or a GPU with bfloat16 support, else float32; a "
                        "resumed run keeps its own")
    if name == "stage1":
        p.add_argument("--bands", type=int, default=3, help="band count of the model")
        p.add_argument("--kl-weight", type=float, default=o["kl_weight"], help="weight of the latent's KL against N(0, I)")
        p.add_argument("--latent-noise", type=float, default=o["latent_noise"],
                       help="standard deviation of the latent posterior, relative to the spread of its means")
        p.add_argument("--latent", type=int, default=LATENT, help="latent channels per cell of 8×8 output pixels (default %(default)s)")
        p.add_argument("--init", help="start the decoder from the decoder of this stage-1 model folder or bundle (default: from bicubic)")
        p.add_argument("--gan-weight", type=float, default=o["gan_weight"],
                       help="weight of the PatchGAN hinge loss (0: no discriminator; default %(default)s)")
        p.add_argument("--gan-start", type=int, default=o["gan_start"],
                       help="the step from which the GAN loss is on (default %(default)s)")
        p.add_argument("--fft-weight", type=float, default=o["fft_weight"])
        p.add_argument("--latent-dropout", type=float, default=o["latent_dropout"],
                       help="share of samples decoded with a zero latent, so the decoder also works as plain regression "
                            "(default %(default)s)")
        p.add_argument("--detail-flat", action=argparse.BooleanOptionalAction, default=o["detail_flat"],
                       help="the decoder's detail path answers a latent that is the same in every cell with a flat "
                            "value instead of an 8×8 pattern (no lattice from a shared latent offset; default %(default)s)")
        p.add_argument("--synth", type=int, default=o["synth"], metavar="F",
                       help="the decoder gains a non-linear synthesis at the output resolution with F channels: the "
                            "latent and the upsampler's features through two 3×3 convolutions over the output pixels "
                            "(0: none; default %(default)s)")
        p.add_argument("--channels", type=int, default=o.get("channels"), metavar="C",
                       help="the channels of the decoder's LR trunk (default: the preset's, 48 in the default preset); "
                            "a narrower --init decoder is widened to it and starts as it was")
        p.add_argument("--blocks", type=int, default=o.get("blocks"), metavar="N",
                       help="the guided blocks of the decoder's LR trunk (default: the preset's, 4 in the default preset); "
                            "a shallower --init decoder gains identity blocks after its own and starts as it was")
    else:
        p.add_argument("--stage1", required=True, help="the --out folder of a stage-1 run")
        p.add_argument("--cond-weight", type=float, default=o["cond_weight"],
                       help="weight of the conditioning net's latent L2 loss (default %(default)s)")
        p.add_argument("--cond-pixel-weight", type=float, default=o["cond_pixel_weight"],
                       help="weight of the L1 of the decoded condition against HR: the regression path (default %(default)s)")
        p.add_argument("--gan-weight", type=float, default=o["gan_weight"],
                       help="weight of the PatchGAN hinge loss on the method's decoded samples (0: no discriminator; "
                            "default %(default)s)")
        p.add_argument("--lr-weight", type=float, default=o["lr_weight"],
                       help="with --gan-weight: weight of the L1 between a decoded sample taken back to the LR grid and the LR "
                            "(default %(default)s)")
        p.add_argument("--features", type=int, default=o["features"],
                       help="channels of LR features the conditioning net gives the denoiser beside its latent guess "
                            "(default %(default)s)")
        p.add_argument("--spread", action=argparse.BooleanOptionalAction, default=o["spread"],
                       help="the conditioning net also predicts the spread of the latent around its guess per cell, "
                            "and the sampler draws the residual standardised by it (default %(default)s)")
        p.add_argument("--energy-weight", type=float, default=o["energy_weight"],
                       help="with --gan-weight: weight of the energy score of two decoded samples against HR, "
                            "which asks their spread to follow the uncertainty (default %(default)s)")
        p.add_argument("--sample-fidelity", type=float, default=o.get("sample_fidelity", 0.0),
                       help="with --gan-weight: weight of the L1 of the decoded samples against HR, which trades their "
                            "spread for fidelity (default %(default)s)")
        p.add_argument("--calibration-weight", type=float, default=o.get("calibration_weight", 0.0),
                       help="with --energy-weight: weight of the gap between the local spread of the two decoded samples "
                            "and the local error of their mean against HR (training.latent.calibration_gap), which asks "
                            "the spread to sit where the error is (default %(default)s)")
        p.add_argument("--lattice-weight", type=float, default=o.get("lattice_weight", 0.0),
                       help="with --gan-weight: weight of how far the lattice of the decoded samples' added detail (the "
                            "power at the LR pixel frequency, the bench's measure) rises above HR's own (default %(default)s)")
        p.add_argument("--spectrum-weight", type=float, default=o.get("spectrum_weight", 0.0),
                       help="with --gan-weight: weight of the mean |log| gap between the spectrum of the decoded samples' "
                            "added detail and HR's, 0.125 cycles/pixel to Nyquist (default %(default)s)")
        if name in (E2DIFFSR.name, ADD_E2DIFFSR):
            p.add_argument("--unroll", action=argparse.BooleanOptionalAction, default=o.get("unroll", False),
                           help="with --gan-weight: judge the sampler's own samples (its whole chain from noise, with the "
                                "gradient through every step) instead of one z0 prediction at a random step "
                                "(default %(default)s)")
        if name == ADD:
            p.add_argument("--init", required=True,
                           help="start the conditioning net and denoiser from this LCMSR run folder, or a bundle's LCMSR "
                                "networks; the decoder starts from --stage1's and is trained on the decoded samples")
            p.add_argument("--decoder-fidelity", type=float, default=o["decoder_fidelity"],
                           help="weight of stage 1's L1 and spectrum loss of the true latent decoded (default %(default)s)")
            p.add_argument("--gate", action=argparse.BooleanOptionalAction, default=o.get("gate", False),
                           help="the decoder gains a gate: a gain per output pixel and band, read from the LR branch's "
                                "features there, on what the latent adds at the output resolution (default %(default)s)")
            return p
        if name == ADD_E2DIFFSR:
            p.add_argument("--init", required=True,
                           help="start the conditioning net and denoiser from this E²DiffSR run folder, or a bundle's "
                                "E²DiffSR networks")
            p.add_argument("--decoder", required=True,
                           help="the run folder of `add`: its decoder (frozen) decodes the z0 predictions in place of "
                                "--stage1's")
            return p
        p.add_argument("--init", help="start the conditioning net and denoiser from this method's networks in a bundle, "
                                      "or from a run folder of this method")
        p.add_argument("--train-decoder", action="store_true",
                       help="train the stage-1 decoder too, on every decoded term (the samples' adversarial, LR and "
                            "energy terms, the regression path's L1), plus --decoder-fidelity × stage 1's loss of the "
                            "true latent decoded")
        p.add_argument("--decoder-fidelity", type=float, default=1.0,
                       help="with --train-decoder: weight of stage 1's L1 and spectrum loss of the true latent decoded "
                            "(default %(default)s)")
        p.add_argument("--detail-flat", action="store_true",
                       help="with --train-decoder: the decoder's detail path answers a latent that is the same in every "
                            "cell with a flat value instead of an 8×8 pattern")
    return p


def finetune_parser(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a bundle on your rasters (both stages) into a new bundle")
    f.add_argument("--rasters", nargs="+", required=True, metavar="PATH", help="training rasters (any GDAL raster) or folders of them")
    f.add_argument("--out", required=True, help="the new bundle's folder (its runs go to OUT/training; the same command again resumes)")
    f.add_argument("--bands", type=band_list, metavar="1,2,3,4", help="the rasters' bands to train on, in order (default all)")
    f.add_argument("--init", help=f"the start bundle: a name under resources/models or a folder (default {DEFAULT_MODEL})")
    f.add_argument("--steps", type=int, default=recipe.FINETUNE["steps"], help="stage-1 steps (default %(default)s)")
    f.add_argument("--stage2-steps", type=int, help="steps of each stage-2 method (default: half of --steps)")
    f.add_argument("--scales", type=float, nargs=2, default=recipe.RUN["scales"], metavar=("MIN", "MAX"),
                   help="range of the training scales (default 1 8)")
    f.add_argument("--val", nargs="+", metavar="PATH",
                   help="validation rasters (default: the last 15%% of the rows of every training raster, held back)")
    f.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    f.add_argument("--batch", type=int, default=recipe.RUN["batch"])
    f.add_argument("--crop", type=int, default=recipe.RUN["crop"], help="HR window size, a multiple of 32 (default %(default)s)")
    f.add_argument("--lr", type=float, default=recipe.FINETUNE["lr"], help="peak learning rate (default %(default)s)")
    f.add_argument("--val-crop", type=int, default=recipe.RUN["val_crop"], help="side of the validation windows (default %(default)s)")
    f.add_argument("--val-images", type=int, default=recipe.RUN["val_images"], help="number of validation windows (default %(default)s)")
    f.add_argument("--seed", type=int, default=recipe.RUN["seed"])
    f.add_argument("--workers", type=int, default=0, help="data loader processes")
    f.add_argument("--name", help="the model's name in its card (default: the folder's name)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")


def parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m training", description="Train, bundle and benchmark LatentSR models.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _train_parser(sub, "stage1", "stage 1: residual autoencoder with the continuous-scale decoder")
    _train_parser(sub, E2DIFFSR.name, "stage 2, E²DiffSR: conditioning net + short-chain latent diffusion")
    _train_parser(sub, LCMSR.name, "stage 2, LCMSR: conditioning net + latent consistency model")
    _train_parser(sub, ADD, "LCMSR's one-step samples decoded and judged by the PatchGAN, with the gradient reaching the "
                            "decoder (adversarial diffusion distillation)")
    _train_parser(sub, ADD_E2DIFFSR, "E²DiffSR's training continued through the decoder of `add` (frozen): the last stage "
                                     "of the recipe")
    finetune_parser(sub)
    b = sub.add_parser("bundle", help="write an inference bundle for the engine")
    b.add_argument("--stage1", help="stage-1 run folder")
    b.add_argument("--e2diffsr", help="E²DiffSR run folder")
    b.add_argument("--lcmsr", help="LCMSR run folder")
    b.add_argument("--add", help="the run folder of `add` (from --lcmsr's networks): LCMSR's networks and the decoder "
                                 "are taken from it, and the card records both runs")
    b.add_argument("--add-e2diffsr", help="the run folder of `add-e2diffsr` (from --e2diffsr's networks, through --add's "
                                          "decoder): E²DiffSR's networks are taken from it, and the card records both runs")
    b.add_argument("--random", action="store_true", help="randomly initialised networks instead of trained ones")
    b.add_argument("--preset", default="default", help="network sizes of --random")
    b.add_argument("--name", default=DEFAULT_MODEL)
    b.add_argument("--out", default=str(MODELS_DIR), help="parent folder of the bundle (default resources/models)")
    r = sub.add_parser("reach", help="measure how far each sampling method's latent carries a tile's edge, at every "
                                     "step count, and write it to the bundle's card (the halo the engine gives tiles)")
    r.add_argument("--model", help=f"bundle name under resources/models or bundle folder (default {DEFAULT_MODEL})")
    r.add_argument("--rasters", nargs="+", required=True, metavar="PATH",
                   help="rasters, or folders searched for rasters, to measure on (their centre windows; real imagery)")
    r.add_argument("--bands", type=band_list, metavar="1,2,3", help="the rasters' bands, in the model's order (default all)")
    e = sub.add_parser("export-onnx", help="export a bundle's inference graphs to ONNX, into the bundle folder")
    e.add_argument("--model", help=f"bundle name under resources/models or bundle folder (default {DEFAULT_MODEL})")
    return ap


def train(args) -> None:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .trainer import Settings, Trainer

    if args.command == "stage1":
        from .stage1 import Stage1 as stage
        options = {"kl_weight": args.kl_weight, "fft_weight": args.fft_weight, "latent_dropout": args.latent_dropout,
                   "latent_noise": args.latent_noise, "init": args.init, "gan_weight": args.gan_weight,
                   "gan_start": args.gan_start, **({"detail_flat": True} if args.detail_flat else {}),
                   **({"synth": args.synth} if args.synth else {}),
                   **({"channels": args.channels} if args.channels is not None else {}),
                   **({"blocks": args.blocks} if args.blocks is not None else {})}
    elif args.command == E2DIFFSR.name:
        from .e2diffsr import E2DiffSRStage as stage
    elif args.command == ADD:
        from .lcmsr import ADDStage as stage
    elif args.command == ADD_E2DIFFSR:
        from .e2diffsr import AddE2DiffSRStage as stage
    else:
        from .lcmsr import LCMSRStage as stage
    if args.command != "stage1" and args.calibration_weight and not (args.gan_weight > 0 and args.energy_weight > 0):
        raise TrainingError("--calibration-weight needs the second sample that --gan-weight and --energy-weight draw")
    if args.command != "stage1":
        options = {"cond_weight": args.cond_weight, "cond_pixel_weight": args.cond_pixel_weight,
                   "gan_weight": args.gan_weight, "lr_weight": args.lr_weight,
                   "energy_weight": args.energy_weight, "features": args.features, "spread": args.spread,
                   **({"sample_fidelity": args.sample_fidelity} if args.sample_fidelity else {}),
                   **({"calibration_weight": args.calibration_weight} if args.calibration_weight else {}),
                   **({"lattice_weight": args.lattice_weight} if args.lattice_weight else {}),
                   **({"spectrum_weight": args.spectrum_weight} if args.spectrum_weight else {}),
                   **({"unroll": True} if getattr(args, "unroll", False) else {}),
                   **({"init": args.init} if args.init else {}),
                   **({"train_decoder": True, "decoder_fidelity": args.decoder_fidelity}
                      if args.command == ADD or getattr(args, "train_decoder", False) else {}),
                   **({"detail_flat": True} if getattr(args, "detail_flat", False) else {}),
                   **({"gate": True} if getattr(args, "gate", False) else {}),
                   **({"decoder": args.decoder} if args.command == ADD_E2DIFFSR else {})}
    if args.steps < 1:  # a run's length (the step bench builds its trainers at 0 and sets their steps itself)
        raise TrainingError(f"--steps must be at least 1, got {args.steps}")
    val = args.val if args.rasters or not args.val else args.val[0]
    settings = Settings(
        data=args.rasters or args.data, val=val, rasters=bool(args.rasters), raster_bands=args.raster_bands, out=args.out, steps=args.steps, schedule_steps=args.schedule_steps,
        batch=args.batch, lr=args.lr, warmup=args.warmup, resume=args.resume, device=args.device,
        ckpt_every=args.ckpt_every, val_every=args.val_every, crop=args.crop, workers=args.workers, seed=args.seed,
        scale_min=args.scales[0], scale_max=args.scales[1], ema_decay=args.ema_decay, preset=args.preset,
        bands=getattr(args, "bands", 3), latent=getattr(args, "latent", 16), val_images=args.val_images, val_crop=args.val_crop,
        progress=not args.no_progress, stage1=getattr(args, "stage1", None), options=options, precision=args.precision,
        guard=args.guard)
    with logging_redirect_tqdm():
        Trainer(stage, settings).run()


def main(argv: list[str] | None = None) -> int:
    """Bad input: one line on stderr, exit code 2. Ctrl-C during training checkpoints and exits with
    130, SIGTERM (a batch scheduler stopping the job) likewise with 143; either signal elsewhere
    unwinds (what is written is replaced whole) with one line and the same codes."""
    from engine.cli import Terminated, terminate_cleanly

    from .distributed import is_main

    # under torchrun, the other ranks only report warnings and errors
    logging.basicConfig(level=logging.INFO if is_main() else logging.WARNING, format="%(message)s")
    try:
        args = parser().parse_args(argv)
        with terminate_cleanly():
            run(args)
    except (LatentSRError, TrainingError) as e:
        print(f"error: {single_line(str(e))}", file=sys.stderr)
        return 2
    except Interrupted as e:
        terminated = e.signum == signal.SIGTERM
        print(f"{'terminated' if terminated else 'interrupted'}: {e}", file=sys.stderr)
        return 143 if terminated else 130
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def run(args) -> None:
    if args.command in STAGES:
        train(args)
    elif args.command == "finetune":
        from tqdm.contrib.logging import logging_redirect_tqdm

        from .finetune import Finetune, run as finetune

        job = Finetune(rasters=args.rasters, out=args.out, bands=args.bands, init=args.init, steps=args.steps,
                       stage2_steps=args.stage2_steps, scale_min=args.scales[0], scale_max=args.scales[1], val=args.val,
                       device=args.device, batch=args.batch, crop=args.crop, lr=args.lr, seed=args.seed,
                       workers=args.workers, val_crop=args.val_crop, val_images=args.val_images, name=args.name,
                       progress=not args.no_progress)
        with logging_redirect_tqdm():
            finetune(job)
    elif args.command == "bundle":
        from . import bundle

        if args.random:
            card, tensors = bundle.random_bundle(args.preset, name=args.name)
        elif args.stage1:
            card, tensors = bundle.from_stages(args.stage1, args.e2diffsr, args.lcmsr, args.name, args.add, args.add_e2diffsr)
        else:
            raise TrainingError("give --stage1 (with --e2diffsr and/or --lcmsr), or --random")
        folder = bundle.write(Path(args.out) / args.name, card, tensors,
                              bundle.stage1_encoder(args.stage1) if args.stage1 else None)
        logging.getLogger(__name__).info("wrote %s (methods: %s)", folder, ", ".join(card.methods))
    elif args.command == "reach":
        from . import reach

        reach.measure(args.model, args.rasters, args.bands)
    else:
        from . import export

        export.export(args.model)
