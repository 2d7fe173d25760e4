"""Training data from GDAL rasters (GeoTIFF mosaics with nodata and their own radiometry).

Each raster is normalised exactly as inference normalises it (engine.raster.band_norms: whole-raster
statistics, Byte 0..255, other types their 0.1 and 99.9 percentiles), and that per-band map is
recorded in the model card. Training windows are drawn at random among the windows that hold at
most MAX_NODATA of nodata pixels (any band); their nodata pixels are NaN, which make_pair turns
into a mask that keeps them out of every loss. Validation is a separate raster, or else the last
VAL_SHARE of each training raster's rows, which no training window reaches.

Every random choice of a sample is drawn from numpy's generator seeded by (seed, step, index), as
for image folders, so a batch is a pure function of its step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import raster
from engine.errors import LatentSRError

from .data import spread
from .errors import TrainingError

log = logging.getLogger(__name__)

RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc", ".hdf", ".png")
MAX_NODATA = 0.02  # share of nodata pixels a training window may hold
VAL_SHARE = 0.15  # share of rows held back for validation when there is no validation raster
MASK_PIXELS = 4 << 20  # the validity map of the window search is read decimated to about this many pixels
TRIES = 16  # draws of a window before the search's best is taken as is


def list_rasters(paths: list[str]) -> list[Path]:
    """The rasters named by ``paths``: files as given, folders searched recursively for raster files."""
    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.suffix.lower() in RASTER_EXTENSIONS and f.is_file())
            if not found:
                raise TrainingError(f"no rasters ({', '.join(RASTER_EXTENSIONS)}) under {p}")
            out += found
        elif path.is_file() or p.startswith("/vsi"):
            out.append(path)
        else:
            raise TrainingError(f"raster not found: {p}")
    if not out:
        raise TrainingError("no training rasters given")
    return out


def window_nodata(valid: np.ndarray, size: int) -> np.ndarray:
    """The share of invalid pixels of every size×size window of ``valid`` (H×W bool), indexed by
    the window's top-left pixel: (H − size + 1)×(W − size + 1); empty when a side is shorter."""
    c = np.pad((~valid).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    counts = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    return counts / float(size * size)


def candidate_origins(valid: np.ndarray, size: int, max_nodata: float, rows: int) -> np.ndarray:
    """(y, x) top-left pixels of the size×size windows of ``valid`` with at most ``max_nodata`` of
    invalid pixels that lie within its first ``rows`` rows: N×2."""
    share = window_nodata(valid[:rows], size)
    return np.argwhere(share <= max_nodata + 1e-12)


def grid_origins(valid: np.ndarray, step: int, size: int, row0: int, row1: int, width: int) -> list[tuple[int, int]]:
    """Top-left pixels (y, x) of non-overlapping size×size windows, on a grid over rows row0..row1
    of a raster ``width`` pixels wide, whose cells in ``valid``, its validity map read decimated by
    ``step``, all hold data: with step 1 exactly the windows without a nodata pixel, row by row."""
    ys = np.arange(row0, row1 - size + 1, size)
    xs = np.arange(0, width - size + 1, size)
    if not len(ys) or not len(xs):
        return []
    c = np.pad((~valid).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y0, y1 = ys // step, (ys + size - 1) // step + 1
    x0, x1 = xs // step, (xs + size - 1) // step + 1
    counts = c[y1][:, x1] - c[y0][:, x1] - c[y1][:, x0] + c[y0][:, x0]
    iy, ix = np.nonzero(counts == 0)
    return list(zip(ys[iy].tolist(), xs[ix].tolist()))


@dataclass
class Source:
    """One raster as training sees it: its selected bands, their normalisation, and where windows go."""

    path: str
    bands: tuple[int, ...]
    norms: list  # engine.raster.BandNorm per selected band
    dtype: str
    width: int
    height: int
    train_rows: int  # training windows lie within rows 0..train_rows
    step: int  # decimation of the window search's validity map
    origins: np.ndarray  # candidate training origins on the decimated grid (N×2)

    def card(self) -> dict:
        """The per-band normalisation, as recorded in the model card."""
        return {"raster": self.path, "data_type": self.dtype, "bands": [
            {"band": b, "offset": n.offset, "scale": n.scale} for b, n in zip(self.bands, self.norms)]}


def validity(ds, info, step: int) -> np.ndarray:
    """Where every selected band holds data, read decimated by ``step`` (nearest)."""
    bw, bh = -(-info.width // step), -(-info.height // step)
    try:
        stored = np.stack([ds.GetRasterBand(b).ReadAsArray(buf_xsize=bw, buf_ysize=bh,
                                                          resample_alg=raster.gdal.GRIORA_NearestNeighbour)
                           for b in info.bands])
    except RuntimeError as exc:
        raise TrainingError(f"reading {ds.GetDescription()} failed: {raster.one_line(exc)}") from None
    return raster.read_valid(ds, info, stored, buf=(bw, bh)).all(0)


def open_source(path: Path, bands: list[int] | None, crop: int, val_crop: int | None) -> tuple[Source, object, object]:
    """A training raster's Source, with its GDAL dataset and RasterInfo. With ``val_crop``, its last
    rows (VAL_SHARE of them, at least val_crop) are held back for validation: training windows of
    ``crop`` pixels lie above them."""
    try:
        ds = raster.open_raster(str(path))
        info = raster.describe(ds, bands)
        norms = raster.band_norms(ds, info)
    except LatentSRError as exc:
        raise TrainingError(f"{path}: {exc}") from None
    train_rows = info.height - (max(val_crop, int(round(VAL_SHARE * info.height))) if val_crop else 0)
    step = max(1, int(np.ceil(np.sqrt(info.width * info.height / MASK_PIXELS))))
    valid = validity(ds, info, step)
    size = max(1, -(-crop // step))
    origins = candidate_origins(valid, size, MAX_NODATA, max(0, train_rows // step)) if train_rows >= crop else np.zeros((0, 2), int)
    origins = origins[(origins[:, 0] * step + crop <= train_rows) & (origins[:, 1] * step + crop <= info.width)]
    src = Source(str(path), info.bands, norms, np.dtype(info.dtype).name, info.width, info.height, train_rows, step, origins)
    return src, ds, info


class RasterSet:
    """Training rasters and their validation crops. ``bands``: the 1-based bands to use (None: all,
    then every raster must have the same count); ``val``: validation rasters (None: hold back the
    last VAL_SHARE of every training raster's rows)."""

    def __init__(self, paths: list[str], bands: list[int] | None, crop: int, val: list[str] | None = None,
                 val_crop: int = 128):
        self.crop, self.band_list = crop, list(bands) if bands else None
        self.held_back = not val
        files = list_rasters(paths)
        self.sources = []
        for f in files:
            self.sources.append(open_source(f, bands, crop, val_crop if self.held_back else None)[0])
        counts = {len(s.bands) for s in self.sources}
        if len(counts) > 1:
            raise TrainingError("the training rasters have different band counts: choose the bands (--bands)")
        self.bands = counts.pop()
        weights = np.array([len(s.origins) for s in self.sources], dtype=np.float64)
        if weights.sum() == 0:
            raise TrainingError(f"no training window of {crop}×{crop} pixels with at most {MAX_NODATA:.0%} nodata "
                                "fits in the rasters" + (" above their held-back validation rows" if self.held_back else ""))
        self.weights = weights / weights.sum()
        self.val_paths = None if self.held_back else list_rasters(val)
        self.val_crop = val_crop
        self._open: dict = {}

    def __getstate__(self):  # GDAL datasets stay in their process
        return dict(self.__dict__, _open={})

    def dataset(self, path: str):
        if path not in self._open:
            ds = raster.open_raster(path)
            self._open[path] = (ds, raster.describe(ds, self.band_list))
        return self._open[path]

    def read(self, src: Source, x: int, y: int, size: int, ds=None, info=None) -> np.ndarray:
        """A normalised window of ``src``, NaN where any band has no data (C×size×size float32)."""
        if ds is None:
            ds, info = self.dataset(src.path)
        stored = raster.read_window(ds, info, x, y, size, size)
        valid = raster.read_valid(ds, info, stored, x, y).all(0)
        out = np.stack([n.forward(stored[c].astype(np.float64)) for c, n in enumerate(src.norms)])
        out[:, ~valid] = np.nan
        return out

    def window(self, rng: np.random.Generator) -> np.ndarray:
        """A random training window of ``crop`` pixels with at most MAX_NODATA of nodata pixels; the
        draw with the fewest nodata pixels when TRIES draws found none."""
        best = None
        for _ in range(TRIES):
            src = self.sources[int(rng.choice(len(self.sources), p=self.weights))]
            cy, cx = src.origins[int(rng.integers(len(src.origins)))]
            y = min(int(cy) * src.step + int(rng.integers(src.step)), src.train_rows - self.crop)
            x = min(int(cx) * src.step + int(rng.integers(src.step)), src.width - self.crop)
            img = self.read(src, x, y, self.crop)
            share = float(np.isnan(img[0]).mean())
            if share <= MAX_NODATA:
                return img
            if best is None or share < best[0]:
                best = (share, img)
        return best[1]

    def validation(self, crop: int, count: int) -> np.ndarray:
        """Up to ``count`` validation crops without nodata, spread evenly over the candidates:
        N×C×crop×crop normalised with each raster's own statistics, as inference would. The
        candidates come from the validity map read decimated (as the window search reads it: about
        MASK_PIXELS, whatever the raster's size); each crop read is checked, and one that holds a
        nodata pixel the decimated map missed gives way to the next candidate."""
        found = []
        if self.held_back:
            for src in self.sources:
                ds, info = self.dataset(src.path)
                valid = validity(ds, info, src.step)
                found += [(src, ds, info, y, x)
                          for y, x in grid_origins(valid, src.step, crop, src.train_rows, src.height, src.width)]
        else:
            for path in self.val_paths:
                src, ds, info = open_source(path, self.band_list, crop, None)
                if len(src.bands) != self.bands:
                    raise TrainingError(f"the validation raster {path} has {len(src.bands)} bands, the training rasters {self.bands}")
                valid = validity(ds, info, src.step)
                found += [(src, ds, info, y, x) for y, x in grid_origins(valid, src.step, crop, 0, src.height, src.width)]
        picks = spread(len(found), count)
        chosen = set(picks)
        crops = {}
        for k in [*picks, *(k for k in range(len(found)) if k not in chosen)]:
            if len(crops) == count:
                break
            src, ds, info, y, x = found[k]
            img = self.read(src, x, y, crop, ds, info)
            if not np.isnan(img).any():
                crops[k] = img
        if not crops:
            raise TrainingError(f"no validation window of {crop}×{crop} pixels without nodata: "
                                + ("the held-back rows of the training rasters are too few or empty"
                                   if self.held_back else "the validation rasters are too small or empty"))
        return np.stack([crops[k] for k in sorted(crops)])

    def card(self) -> dict:
        """What the model card records about the data: the per-band normalisation of each raster."""
        return {"rule": "engine.raster.band_norms: whole-raster statistics; Byte 0..255, other types the 0.1 and "
                        "99.9 percentiles (a decimated read) map to 0..1",
                "rasters": [s.card() for s in self.sources],
                "validation": "held-back rows" if self.held_back else [str(p) for p in self.val_paths]}


class WindowDataset:
    """Map-style dataset indexed by (step, i): a random window of a RasterSet, randomly flipped and
    rotated, as a float32 tensor C×crop×crop (NaN at nodata pixels)."""

    def __init__(self, rasters: RasterSet, seed: int):
        self.rasters, self.seed = rasters, seed

    def __getitem__(self, key: tuple[int, int]):
        import torch

        step, i = key
        rng = np.random.default_rng([self.seed, step, i])
        img = np.rot90(self.rasters.window(rng), int(rng.integers(4)), axes=(1, 2))
        if rng.integers(2):
            img = img[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
