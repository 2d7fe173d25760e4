"""The measured edge of a bundle's sampled latent (engine.reach, the card's ``sample_edge``).

A tile's sampled latent differs from a whole run's near the tile's edge, and how far in depends on the
trained denoiser and on how many times it runs: the 6 latent cells of engine.reach.SAMPLE_EDGE_CELLS,
measured once, held for the bundles until the fifth 2026-12-05 one, whose E²DiffSR needs 9 cells at 1
step, 18 at 2 and 14 at 3 and 4. So each bundle measures its own, for every sampling method and step
count, through the engine's own tiler. On centre windows of real rasters, written as float32 so that no
rounding hides a difference, each method runs at detail 1 (the blend scales the sampled latent's
difference by D) once as one tile and once tiled with the default overlap and a candidate edge in the
card, at several scales and seeds. The edge recorded is the smallest with which every tiled output is
within TOLERANCE of the whole run, in 8-bit levels of the window's range.

Under 1 level a rounded 8-bit output differs by 1 at most; TOLERANCE keeps a quarter of that, because a
few windows and two seeds do not see the worst image: for that E²DiffSR at 4 steps, half a level on two
windows gave an edge of 9 cells, at which the seam test's NAIP crop (float32, seed 5) still differed by
1.55 levels, 3.2× the windows' 0.48. A tighter tolerance would measure the regression latent instead:
at ×2 and D = 0 (its halo is the decoder's reach alone) tiles differ by up to 0.09 levels.

The search assumes that a wider edge never does worse (``smallest_edge``). It does not assume that more
steps reach further (that E²DiffSR: 18 cells at 2 steps, 14 at 4), so each step count is searched from 0.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine import modelfile
from engine.card import EDGE_LIMIT
from engine.errors import LatentSRError
from engine.methods import DEFAULTS, RunOptions
from engine.pipeline import Request, superresolve
from engine.registry import REGISTRY

from .data import spread
from .errors import TrainingError
from .rasters import list_rasters

log = logging.getLogger(__name__)

TOLERANCE = 0.25  # the largest tiled − untiled difference kept, in levels of the window's range over 255
WINDOW = 128  # side of the centre window of each raster, LR pixels
TILE = 64  # input pixels: a 128² window makes 2 × 2 tiles with the default overlap
SCALES = (2.0, 3.3, 4.0)  # as the seam test's
SEEDS = (0, 1)
RASTERS = 4  # windows, from rasters evenly spread over those given


@dataclass(frozen=True)
class Case:
    raster: str  # the raster's path, relative to the folder it was found in
    window: str  # the float32 window's path
    scale: float
    seed: int
    level: float  # one 8-bit level of the window's range, in its units


def smallest_edge(passes: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The smallest edge in [lo, hi] for which ``passes``, on the assumption that an edge that passes is
    followed only by edges that pass and that none below ``lo`` does: ``lo`` first, then doubling up to
    ``hi`` until one passes, then bisection between it and the last that failed; None when none does."""
    failed, edge = lo - 1, lo
    while not passes(edge):
        if edge >= hi:
            return None
        failed, edge = edge, min(hi, max(1, 2 * edge))
    while edge - failed > 1:
        mid = (failed + edge) // 2
        if passes(mid):
            edge = mid
        else:
            failed = mid
    return edge


def windows(rasters: list[str], bands: list[int] | None, count: int, folder: Path) -> list[tuple[str, str, float]]:
    """Float32 GeoTIFFs of the centre WINDOW² of up to ``count`` rasters evenly spread over ``rasters``
    (files, or folders searched for rasters: training.rasters.list_rasters), with ``bands`` (1-based;
    None: all): each as (the raster's path relative to its folder, the window's path, its value range)."""
    from osgeo import gdal

    gdal.UseExceptions()
    found = [(f, f.relative_to(r)) for r in rasters for f in list_rasters([r])]
    files = [f for f, _ in found]
    picks = spread(len(files), count)
    out = []
    for k in picks:
        try:
            src = gdal.Open(str(files[k]))
        except RuntimeError as exc:
            raise TrainingError(f"cannot read {files[k]}: {exc}") from None
        w, h = min(WINDOW, src.RasterXSize), min(WINDOW, src.RasterYSize)
        if min(w, h) <= TILE:
            raise TrainingError(f"{files[k]} is {src.RasterXSize}×{src.RasterYSize} pixels: measuring the sampled "
                                f"latent's edge needs rasters of more than {TILE} pixels on each side")
        path = str(folder / f"window{k}.tif")
        gdal.Translate(path, src, srcWin=[(src.RasterXSize - w) // 2, (src.RasterYSize - h) // 2, w, h],
                       bandList=bands, outputType=gdal.GDT_Float32, format="GTiff")
        a = gdal.Open(path).ReadAsArray()
        if not a.max() > a.min():
            raise TrainingError(f"the centre of {files[k]} is one value: measuring the sampled latent's edge needs texture")
        out.append((found[k][1].as_posix() if found[k][1].parts else files[k].name, path, float(a.max() - a.min())))
    return out


def with_edges(card, edges: dict[str, list[int]], **updates):
    """``card`` with ``edges[m]`` as the ``sample_edge`` of each method m in it, and ``updates``."""
    methods = {m: dict(s.to_json(), **({"sample_edge": edges[m]} if m in edges else {})) for m, s in card.methods.items()}
    return card.updated(methods=methods, **updates)


@contextlib.contextmanager
def quiet_engine():
    """The engine's per-run INFO lines held back during the many runs of a measurement."""
    logger = logging.getLogger("engine")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def read(path: str) -> np.ndarray:
    from osgeo import gdal

    return gdal.Open(path).ReadAsArray().astype(np.float64)


def measure(model: str, rasters: list[str], bands: list[int] | None = None, count: int = RASTERS) -> dict:
    """Measure the sampled latent's edge of every sampling method of the bundle ``model`` (a name under
    resources/models or a folder) at every step count, write it to the bundle's card (``sample_edge``;
    ``training.sample_edge`` records how), and return that record."""
    start = time.perf_counter()
    try:
        folder = modelfile.resolve(model)
        card = modelfile.read_card(folder)
    except LatentSRError as exc:
        raise TrainingError(str(exc)) from None
    sampling = [m for m in card.methods if REGISTRY[m].stochastic]
    if not sampling:
        raise TrainingError(f"{folder} has no method that samples a latent: it has no edge to measure")
    record = {"rasters": [str(Path(p).resolve()) for p in rasters], "window": WINDOW, "tile": TILE, "overlap": DEFAULTS.overlap, "scales": list(SCALES),
              "seeds": list(SEEDS), "detail": 1.0, "backend": "torch", "precision": "float32",
              "tolerance_levels": TOLERANCE, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp, quiet_engine():
        tmp = Path(tmp)
        copy = tmp / "model"
        shutil.copytree(folder, copy)
        found = windows(rasters, bands, count, tmp)
        cases = [Case(name, path, s, seed, span / 255) for name, path, span in found for s in SCALES for seed in SEEDS]
        edges = {m: [0] * card.methods[m].max_steps for m in sampling}
        for name in sampling:
            spec = card.methods[name]
            widest, below = [], []
            for steps in range(1, spec.max_steps + 1):
                run = Runner(copy, card, edges, name, steps, cases, tmp)
                edge = smallest_edge(run.passes, 0, EDGE_LIMIT)
                if edge is None:
                    raise TrainingError(f"{name} at {steps} steps: a tile's sampled latent still differs from a whole "
                                        f"run's by {run.worst[EDGE_LIMIT]:.3g} at an edge of {EDGE_LIMIT} latent cells, "
                                        f"the widest a card may record")
                edges[name][steps - 1] = edge
                widest.append(round(run.worst[edge], 4))
                if edge - 1 in run.failed:  # the case that needs this edge
                    case, diff = run.failed[edge - 1]
                    below.append({"steps": steps, "edge": edge - 1, "raster": case.raster, "scale": case.scale,
                                  "seed": case.seed, "difference": round(diff, 4)})
                log.info("%s, %d step%s: edge %d latent cells (largest difference %.3g; %s)", name, steps,
                         "s" * (steps > 1), edge, run.worst[edge],
                         f"{run.worst[edge - 1]:.3g} at {edge - 1}" if edge - 1 in run.worst else "the search's start")
            record["methods"][name] = {"edge": edges[name], "largest_difference": widest, "one_cell_less": below}
        record["seconds"] = round(time.perf_counter() - start)
        modelfile.write_card(folder, with_edges(card, edges, training=dict(card.training, sample_edge=record)))
    log.info("wrote the edges (%s) into %s", "; ".join(f"{m} {record['methods'][m]['edge']}" for m in sampling),
             folder / modelfile.CARD)
    return record


class Runner:
    """The runs of one method and step count: the whole run of each case once, then the tiled run of
    every case with a candidate edge in the copied card (``passes``); ``worst[edge]`` the largest
    difference seen, in 8-bit levels of the windows' ranges (over the cases run: the first case over
    TOLERANCE ends a candidate, and ``failed[edge]`` holds it with its difference)."""

    def __init__(self, copy: Path, card, edges: dict, name: str, steps: int, cases: list[Case], tmp: Path):
        self.copy, self.card, self.edges, self.name, self.steps, self.cases, self.tmp = copy, card, edges, name, steps, cases, tmp
        self.whole: dict[Case, np.ndarray] = {}
        self.worst: dict[int, float] = {}
        self.failed: dict[int, tuple[Case, float]] = {}

    def output(self, case: Case, tile: int, overlap: int) -> np.ndarray:
        out = str(self.tmp / f"out-{tile}.tif")
        options = RunOptions(method=self.name, steps=self.steps, detail=1.0, seed=case.seed, model=str(self.copy),
                             backend="torch", precision="float32")
        superresolve(Request(input=case.window, output=out, scale=case.scale, tile=tile, overlap=overlap,
                             options=options))
        return read(out)

    def passes(self, edge: int) -> bool:
        trial = {m: list(e) for m, e in self.edges.items()}
        trial[self.name][self.steps - 1] = edge
        modelfile.write_card(self.copy, with_edges(self.card, trial))
        worst = 0.0
        for case in self.cases:
            if case not in self.whole:
                self.whole[case] = self.output(case, WINDOW + 1, 0)
            tiled = self.output(case, TILE, DEFAULTS.overlap)
            diff = float(np.abs(tiled - self.whole[case]).max()) / case.level
            worst = max(worst, diff)
            if diff > TOLERANCE:
                self.failed[edge] = case, diff
                break
        self.worst[edge] = worst
        return worst <= TOLERANCE
