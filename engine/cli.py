"""``python -m engine``: the command-line interface of the engine.

Bad input ends with one line on stderr and exit code 2; an unexpected failure with one line and
exit code 1 (the traceback goes to the log only with --verbose).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading

from osgeo import gdal

from . import evaluate, raster
from .allocator import fix_mmap_threshold
from .errors import Cancelled, LatentSRError, single_line
from .methods import BACKENDS, DEFAULTS, DETAIL_HELP, DEVICES, RunOptions, steps_help
from .pipeline import Request, superresolve
from .precision import PRECISIONS
from .registry import METHODS
from .report import render_json, render_text

log = logging.getLogger("engine")
GDAL_CACHE_BYTES = 256 * 1024 * 1024  # GDAL's default (5 % of RAM) would let the block cache dominate peak memory


def gdal_to_logging(err_class: int, err_no: int, message: str) -> None:
    """GDAL's own messages go to the debug log, so stderr keeps to the one-line contract (its
    failures reach the user as LatentSRError messages)."""
    logging.getLogger("gdal").debug("GDAL error class %d, number %d: %s", err_class, err_no, message.strip())


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line."""

    def error(self, message: str):
        raise LatentSRError(f"{self.prog}: {message}")


def band_list(text: str) -> list[int]:
    """An argparse type: raster.parse_bands, where no band is an error (leave the option out for all
    bands); training's CLI uses it too."""
    try:
        bands = raster.parse_bands(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if bands is None:
        raise argparse.ArgumentTypeError("no band given")
    return bands


def parse_extent(text: str) -> tuple[float, float, float, float]:
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"extent must be xmin,ymin,xmax,ymax, got '{text}'") from None
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise argparse.ArgumentTypeError(f"extent must be four finite numbers, got '{text}'")
    return xmin, ymin, xmax, ymax


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler stopping the job): unwinds like Ctrl-C, so nothing is left behind."""


def raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def terminate_cleanly():
    """SIGTERM handled like SIGINT for the duration of the block (only the main thread can set it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m engine", description="LatentSR: super-resolution of GDAL rasters.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and debugging detail")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    s = sub.add_parser("superresolve", help="super-resolve a raster into a GeoTIFF")
    s.add_argument("input", help="any GDAL-readable raster (GeoTIFF, PNG, JPEG, VRT, ...)")
    s.add_argument("output", help="output GeoTIFF")
    s.add_argument("--scale", type=float, help="scale factor, 1 < S <= 8, continuous (e.g. 2.5)")
    s.add_argument("--target-resolution", type=float, help="output pixel size in map units; overrides --scale")
    add_run_options(s)
    s.add_argument("--tile", type=int, default=DEFAULTS.tile, help=f"tile size in input pixels (default {DEFAULTS.tile})")
    s.add_argument("--overlap", type=int, default=DEFAULTS.overlap,
                   help=f"tile overlap in input pixels (default {DEFAULTS.overlap})")
    s.add_argument("--samples", type=int, default=1, help="diffusion samples to average (at most 1000)")
    s.add_argument("--uncertainty", help="GeoTIFF for the per-pixel standard deviation of the samples")
    s.add_argument("--bands", type=band_list, help="1-based bands to use, e.g. 1,2,3 (default: all)")
    s.add_argument("--extent", type=parse_extent, help="only this part: xmin,ymin,xmax,ymax in the input's CRS")
    s.add_argument("--consistency", action="store_true",
                   help="project the SR so that its bicubic downsampling matches the input exactly")
    s.add_argument("--cog", action="store_true", help="write a Cloud Optimized GeoTIFF")
    s.add_argument("--cluster", help="run the tiles on a Dask cluster: a scheduler address (tcp://host:8786) or "
                                     "local:N for N local worker processes; the output is the same")
    e = sub.add_parser("evaluate", help="score an SR raster against a reference HR raster (or degrade the reference, "
                                        "super-resolve it and score that, with bicubic beside it)")
    e.add_argument("--hr", required=True, help="reference HR raster")
    e.add_argument("--sr", help="SR raster on the reference's grid; without it the reference is degraded by --scale "
                                "and super-resolved with --method")
    e.add_argument("--lr", help="LR raster for the consistency PSNR (default: the reference degraded by --scale)")
    e.add_argument("--scale", type=float, help="scale factor of the SR (default with --lr: the size ratio)")
    e.add_argument("--bands", type=band_list, help="1-based bands used in every raster, e.g. 1,2,3 (default: all)")
    add_run_options(e, " (without --sr)")
    e.add_argument("--html", help="write the HTML report here")
    e.add_argument("--difference", help="write SR - HR here (Float32 GeoTIFF, NaN where either has no data)")
    e.add_argument("--correctness", metavar="PATH", help="write the per-pixel correctness class here (Byte GeoTIFF: "
                                                          "1 improvement, 2 omission, 3 hallucination, 0 not classified)")
    e.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def add_run_options(p: argparse.ArgumentParser, when: str = "") -> None:
    """The flags of the run options (engine.methods.RunOptions) that both commands take; ``when``
    says when they matter."""
    p.add_argument("--method", choices=METHODS, default=DEFAULTS.method,
                   help=f"SR method{when} (default {DEFAULTS.method})")
    p.add_argument("--steps", type=int, help=f"sampling steps for the diffusion methods{when} ({steps_help()})")
    p.add_argument("--detail", metavar="D", help=DETAIL_HELP)  # checked with the options (RunOptions)
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULTS.backend)
    p.add_argument("--device", choices=DEVICES, default=DEFAULTS.device)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--model", help=f"bundled model name or model folder{when} (default: the bundled default)")
    p.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                   help=f"arithmetic of the learned methods{when}: auto (default: the fastest path measured within "
                        "the quality limits on this CPU, docs/BENCHMARKS.md), float32 (the exact path), or bf16 "
                        "(backend torch)")


def run_options(args) -> RunOptions:
    """The run options of the parsed flags: each field of RunOptions that the command has a flag for."""
    return RunOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions) if hasattr(args, f.name)})


def run_superresolve(args) -> str:
    if args.scale is None and args.target_resolution is None:
        raise LatentSRError("give --scale or --target-resolution")
    req = Request(input=args.input, output=args.output, options=run_options(args), scale=args.scale,
                  target_resolution=args.target_resolution, bands=args.bands, tile=args.tile, overlap=args.overlap,
                  uncertainty=args.uncertainty, cog=args.cog, extent=args.extent, cluster=args.cluster)
    result = superresolve(req)
    log.info("%d×%d written in %.1f s", result.width, result.height, result.seconds)
    return result.output


def run_evaluate(args) -> str:
    report = evaluate.evaluate(evaluate.EvaluateRequest(
        reference=args.hr, sr=args.sr, lr=args.lr, scale=args.scale, bands=args.bands, options=run_options(args),
        html=args.html, difference=args.difference, correctness=args.correctness))
    return render_json(report) if args.json else render_text(report)


def main(argv: list[str] | None = None) -> int:
    fix_mmap_threshold()  # this process is the engine's: the networks' short-lived tensors must not pile up in the heap
    gdal.PushErrorHandler(gdal_to_logging)
    if "GDAL_CACHEMAX" not in os.environ:
        gdal.SetCacheMax(GDAL_CACHE_BYTES)
    try:
        args = parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        with terminate_cleanly():
            text = run_evaluate(args) if args.command == "evaluate" else run_superresolve(args)
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
    except Cancelled as exc:
        print(f"error: {single_line(str(exc))}", file=sys.stderr)
        return 130
    except LatentSRError as exc:
        print(f"error: {single_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
        log.debug("unexpected failure", exc_info=True)
        print(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", file=sys.stderr)
        return 1
    print(text)
    return 0
