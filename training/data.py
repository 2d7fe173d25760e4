"""Image folders for training: random HR crops with flips and 90° rotations, any band count.

Every random choice of a sample is drawn from numpy's generator seeded by (seed, step, index), so
a batch is a pure function of its step: a resumed run sees exactly the batches it would have seen,
with any number of loader workers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".webp", ".tif", ".tiff", ".jpg", ".jpeg")
GDAL_EXTENSIONS = (".tif", ".tiff")


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) under {folder}")
    return files


def normalise(a: np.ndarray) -> np.ndarray:
    """Integer data divided by its type's maximum (8-bit: /255), floats kept: float32."""
    if a.dtype.kind in "iu":
        return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    return a.astype(np.float32)


def _read_gdal(path: Path) -> np.ndarray | None:
    try:
        from osgeo import gdal
    except ImportError:
        return None
    gdal.UseExceptions()
    a = gdal.Open(str(path)).ReadAsArray()
    return a[None] if a.ndim == 2 else a


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "PA") or (im.mode == "RGBA" and path.suffix.lower() not in GDAL_EXTENSIONS):
            im = im.convert("RGB")  # a palette or an alpha channel is not a band
        elif im.mode in ("1", "LA"):
            im = im.convert("L")
        a = np.asarray(im)
    return a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)


def read_image(path: str | Path) -> np.ndarray:
    """C×H×W float32 in normalised units; TIFFs through GDAL when it is importable, else Pillow."""
    path = Path(path)
    a = _read_gdal(path) if path.suffix.lower() in GDAL_EXTENSIONS else None
    if a is None:
        a = _read_pillow(path)
    return normalise(np.ascontiguousarray(a))


def pick_bands(img: np.ndarray, bands: int, rng: np.random.Generator | None) -> np.ndarray:
    """``bands`` bands of an image: a random window of consecutive bands (the first ones without
    rng), or its bands repeated cyclically when it has fewer."""
    n = img.shape[0]
    if n >= bands:
        start = int(rng.integers(n - bands + 1)) if rng is not None else 0
        return img[start:start + bands]
    return img[[k % n for k in range(bands)]]


def fit(img: np.ndarray, crop: int) -> np.ndarray:
    """Reflect-pad an image smaller than ``crop`` on a side."""
    ph, pw = max(0, crop - img.shape[1]), max(0, crop - img.shape[2])
    if ph or pw:
        img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(img.shape[1:]) > 1 else "edge")
    return img


class CropDataset:
    """Map-style dataset indexed by (step, i): a random crop of a random file, randomly flipped and
    rotated, as a float32 tensor C×crop×crop."""

    def __init__(self, files: list[Path], crop: int, bands: int, seed: int):
        self.files, self.crop, self.bands, self.seed = files, crop, bands, seed

    def __getitem__(self, key: tuple[int, int]):
        import torch

        step, i = key
        rng = np.random.default_rng([self.seed, step, i])
        img = fit(pick_bands(read_image(self.files[rng.integers(len(self.files))]), self.bands, rng), self.crop)
        y = int(rng.integers(img.shape[1] - self.crop + 1))
        x = int(rng.integers(img.shape[2] - self.crop + 1))
        img = np.rot90(img[:, y:y + self.crop, x:x + self.crop], int(rng.integers(4)), axes=(1, 2))
        if rng.integers(2):
            img = img[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img))


class StepBatches:
    """Batch sampler: the keys of steps start .. stop-1, ``batch`` samples each, or only the samples
    ``share`` of each (a rank's share of the global batch)."""

    def __init__(self, start: int, stop: int, batch: int, share: range | None = None):
        self.start, self.stop, self.share = start, stop, range(batch) if share is None else share

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield [(step, i) for i in self.share]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def training_source(settings):
    """What a run trains on: the image files under ``settings.data``, or with ``settings.rasters``
    a training.rasters.RasterSet of the rasters it names (then ``settings.bands`` becomes their
    band count)."""
    if not settings.rasters:
        return list_images(settings.data)
    from .rasters import RasterSet

    paths = [settings.data] if isinstance(settings.data, str) else list(settings.data)
    val = [settings.val] if isinstance(settings.val, str) else settings.val
    source = RasterSet(paths, settings.raster_bands, settings.crop, val or None, settings.val_crop)
    settings.bands = source.bands
    return source


def dataset(source, crop: int, bands: int, seed: int):
    """The map-style dataset, indexed by (step, i), of a training_source."""
    if isinstance(source, list):
        return CropDataset(source, crop, bands, seed)
    from .rasters import WindowDataset

    return WindowDataset(source, seed)


def validation(settings, source):
    """The validation crops of a run (N×C×crop×crop float32), or None without validation data:
    centre crops of the --val images, or a RasterSet's validation windows."""
    if isinstance(source, list):
        if not settings.val:
            return None
        return centre_crops(list_images(settings.val), settings.val_crop, settings.bands, settings.val_images)
    return source.validation(settings.val_crop, settings.val_images)


def ignore_interrupts(worker: int) -> None:
    """A loader worker ignores Ctrl-C and SIGTERM, which reach the whole process group: the main
    process finishes its step, checkpoints, and then ends the workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def loader(files, crop: int, bands: int, batch: int, seed: int, start: int, stop: int, workers: int,
           share: range | None = None):
    """Batches (B×C×crop×crop tensors) of steps start .. stop-1 of a training_source (their samples
    ``share`` only)."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset(files, crop, bands, seed), batch_sampler=StepBatches(start, stop, batch, share),
                      num_workers=workers, worker_init_fn=ignore_interrupts if workers else None)


def batch_scale(seed: int, step: int, low: float, high: float) -> float:
    """The scale of a step's batch, uniform in [low, high]."""
    return float(np.random.default_rng([seed, step, 1 << 30]).uniform(low, high))


def spread(n: int, count: int) -> np.ndarray:
    """Up to ``count`` indices of ``n`` items, evenly spread from the first to the last (none of none)."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))


def centre_crops(files: list[Path], crop: int, bands: int, count: int) -> np.ndarray:
    """Centre crops of up to ``count`` files evenly spread over the list: N×C×crop×crop."""
    picks = spread(len(files), count)
    out = []
    for k in picks:
        img = fit(pick_bands(read_image(files[k]), bands, None), crop)
        y, x = (img.shape[1] - crop) // 2, (img.shape[2] - crop) // 2
        out.append(img[:, y:y + crop, x:x + crop])
    return np.stack(out)
