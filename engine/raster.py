"""GDAL raster reading: open and describe the input, sampled band statistics, windowed reads and
clips to an extent. What is written goes through engine.output; which paths may be written, engine.guard."""
from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass, replace

import numpy as np
from osgeo import gdal

from .errors import LatentSRError

gdal.UseExceptions()
log = logging.getLogger(__name__)

SUPPORTED_TYPES = {
    gdal.GDT_Byte: np.uint8,
    gdal.GDT_UInt16: np.uint16,
    gdal.GDT_Int16: np.int16,
    gdal.GDT_UInt32: np.uint32,
    gdal.GDT_Int32: np.int32,
    gdal.GDT_Float32: np.float32,
    gdal.GDT_Float64: np.float64,
}
FLOAT32 = gdal.GDT_Float32
STATS_SAMPLE = 1024  # statistics are computed on at most this many pixels per side


def open_raster(path: str) -> gdal.Dataset:
    """The dataset at ``path`` opened read-only, or a one-line LatentSRError."""
    if not path:
        raise LatentSRError("no input raster given")
    if os.path.exists(path) and os.path.isdir(path):
        raise LatentSRError(f"input is a folder, not a raster: {path}")
    if os.path.exists(path) and os.path.getsize(path) == 0:
        raise LatentSRError(f"input is an empty file: {path}")
    try:
        ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
    except RuntimeError as exc:
        if not os.path.exists(path) and "://" not in path and not path.startswith("/vsi"):
            raise LatentSRError(f"input not found: {path}") from None
        raise LatentSRError(f"cannot read the input as a raster: {one_line(exc)}") from None
    if ds is None or ds.RasterCount == 0:
        raise LatentSRError(f"the input has no raster bands: {path}")
    return ds


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


FLOAT64_HALF_MAX = float(np.finfo(np.float64).max) / 2


@dataclass(frozen=True)
class BandNorm:
    """An affine map between stored values and the normalised units the methods see. Both ways are
    computed on halves of the values (exact in binary floating point, so the results are the
    same bits as the plain formulas), which cannot overflow: a Float64 band whose values reach
    ±1e308 maps without an infinity or a NaN."""

    offset: float
    scale: float
    fill: float  # normalised value used where no neighbour can fill a nodata pixel

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """(x − offset) / scale in float64."""
        return (x * 0.5 - self.offset * 0.5) / (self.scale * 0.5)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.normalise(x).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """x × scale + offset in float64, clipped to the largest float64 where it would overflow."""
        with np.errstate(over="ignore"):
            half = x.astype(np.float64) * (self.scale * 0.5) + self.offset * 0.5
        return np.clip(half, -FLOAT64_HALF_MAX, FLOAT64_HALF_MAX) * 2


@dataclass(frozen=True)
class RasterInfo:
    width: int
    height: int
    bands: tuple[int, ...]  # 1-based indices of the selected bands
    dtype: np.dtype
    gdal_type: int
    nodata: tuple[float | None, ...]
    geotransform: tuple[float, ...] | None
    projection: str
    signed_byte: bool = False  # a Byte band with PIXELTYPE=SIGNEDBYTE: read and written as int8
    masked: bool = False  # the bands have a GDAL mask (a mask band or an alpha band) beyond nodata


def signed_byte(band: gdal.Band) -> bool:
    return band.DataType == gdal.GDT_Byte and (band.GetMetadataItem("PIXELTYPE", "IMAGE_STRUCTURE") or "") == "SIGNEDBYTE"


def has_mask(band: gdal.Band) -> bool:
    """Whether GDAL masks some pixels of ``band`` by other means than its nodata value."""
    flags = band.GetMaskFlags()
    return not flags & (gdal.GMF_ALL_VALID | gdal.GMF_NODATA)


def same_nodata(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and np.isnan(a) and np.isnan(b))


def parse_bands(text: str | None) -> list[int] | None:
    """1-based band numbers from their comma-separated list ("1,2,3"; spaces around a number
    ignored, inside one an error: "1 2" is not band 12), None for no text (all bands): the one
    parser of both CLIs' --bands and the train algorithm's BANDS. Bad text raises ValueError with a
    one-line reason."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        bands = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"bands must be a comma-separated list of band numbers, such as 1,2,3; got '{text}'") from None
    if not bands or min(bands) < 1:
        raise ValueError(f"bands are numbered from 1; got '{text}'")
    return bands


def describe(ds: gdal.Dataset, bands: list[int] | None) -> RasterInfo:
    """Geometry and types of the selected bands, validated: palette rasters, bands of different
    types or different nodata values are refused."""
    count = ds.RasterCount
    bands = list(bands) if bands else list(range(1, count + 1))
    for b in bands:
        if not 1 <= b <= count:
            raise LatentSRError(f"band {b} does not exist: the input has {count} band(s)")
    if len(set(bands)) != len(bands):
        raise LatentSRError("a band is selected twice")
    selected = [ds.GetRasterBand(b) for b in bands]
    for b, band in zip(bands, selected):
        if band.GetColorTable() is not None or band.GetColorInterpretation() == gdal.GCI_PaletteIndex:
            raise LatentSRError(f"band {b} is a palette (class map) band: class codes must not be interpolated; "
                                "resample class maps with nearest neighbour instead (gdalwarp -r near)")
    types = {(band.DataType, signed_byte(band)) for band in selected}
    if len(types) != 1:
        raise LatentSRError("the selected bands have different data types")
    gdal_type, signed = types.pop()
    if gdal_type not in SUPPORTED_TYPES:
        raise LatentSRError(f"data type {gdal.GetDataTypeName(gdal_type)} is not supported")
    nodata = tuple(band.GetNoDataValue() for band in selected)
    if not all(same_nodata(v, nodata[0]) for v in nodata):
        shown = ", ".join(f"band {b}: {'none' if v is None else f'{v:g}'}" for b, v in zip(bands, nodata))
        raise LatentSRError(f"the selected bands have different nodata values ({shown}) and a GeoTIFF holds one "
                            "per file: select bands that share one (--bands) or set one with gdal_translate -a_nodata")
    return RasterInfo(
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        bands=tuple(bands),
        dtype=np.dtype(np.int8 if signed else SUPPORTED_TYPES[gdal_type]),
        gdal_type=gdal_type,
        nodata=nodata,
        geotransform=ds.GetGeoTransform(can_return_null=True),
        projection=ds.GetProjection() or "",
        signed_byte=signed,
        masked=any(has_mask(band) for band in selected),
    )


def valid_mask(x: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where a pixel holds data: not the nodata value and finite."""
    valid = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, dtype=bool)
    if nodata is not None:
        if np.isnan(nodata):
            return valid
        valid &= x != nodata
    return valid


def read_valid(ds: gdal.Dataset, info: RasterInfo, stored: np.ndarray, x0: int = 0, y0: int = 0,
               buf: tuple[int, int] | None = None) -> np.ndarray:
    """Validity (C×h×w) of ``stored``, the selected bands of the window at (x0, y0) (or the whole
    raster read into a ``buf`` = (w, h) buffer): finite, not nodata, and not masked by GDAL's mask
    band (a per-dataset mask, a per-band mask or an alpha band)."""
    valid = np.stack([valid_mask(stored[c], info.nodata[c]) for c in range(stored.shape[0])])
    if info.masked:
        h, w = stored.shape[1:]
        try:
            for c, b in enumerate(info.bands):
                band = ds.GetRasterBand(b)
                if has_mask(band):
                    if buf:
                        mask = band.GetMaskBand().ReadAsArray(buf_xsize=w, buf_ysize=h,
                                                              resample_alg=gdal.GRIORA_NearestNeighbour)
                    else:
                        mask = band.GetMaskBand().ReadAsArray(x0, y0, w, h)
                    valid[c] &= mask > 0
        except RuntimeError as exc:
            raise LatentSRError(f"reading the input's mask failed: {one_line(exc)}") from None
    return valid


def band_norms(ds: gdal.Dataset, info: RasterInfo) -> list[BandNorm]:
    """Per-band normalisation from statistics of the whole raster (a decimated read).

    Byte bands map their full range 0..255 to 0..1, as the models were trained. Other types map
    their 0.1 and 99.9 percentiles to 0..1. The map is affine, so it never bends radiometry.
    """
    step = max(1, int(np.ceil(max(info.width, info.height) / STATS_SAMPLE)))
    bw, bh = max(1, info.width // step), max(1, info.height // step)
    norms = []
    for b, nodata in zip(info.bands, info.nodata):
        try:
            sample = ds.GetRasterBand(b).ReadAsArray(buf_xsize=bw, buf_ysize=bh, resample_alg=gdal.GRIORA_NearestNeighbour)
        except RuntimeError as exc:
            raise LatentSRError(f"reading the input failed: {one_line(exc)}") from None
        valid = read_valid(ds, replace(info, bands=(b,), nodata=(nodata,)), sample[None], buf=(bw, bh))[0]
        values = sample[valid].astype(np.float64)
        if values.size == 0:
            raise LatentSRError(f"band {b} has no valid pixels (all nodata)")
        if info.dtype == np.uint8:
            offset, scale = 0.0, 255.0
        elif info.dtype == np.int8:
            offset, scale = -128.0, 255.0
        else:  # on halves, as BandNorm: the same bits, and no overflow where the range is wider than float64 holds
            lo, hi = np.percentile(values * 0.5, [0.1, 99.9])
            offset, scale = float(lo * 2), float(min(hi - lo, FLOAT64_HALF_MAX) * 2) if hi > lo else 1.0
            if hi - lo > FLOAT64_HALF_MAX:
                log.info("band %d spans %g to %g, wider than a float64 holds: it is normalised by the largest float64 "
                         "(its range maps to 0..%.3g)", b, lo * 2, hi * 2, (hi - lo) / FLOAT64_HALF_MAX)
        norm = BandNorm(offset, scale, 0.0)
        norms.append(replace(norm, fill=float(norm.normalise(finite_mean(values)))))
    return norms


def finite_mean(values: np.ndarray) -> float:
    """The mean of float64 ``values``, also where their sum overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(values.mean())
    return mean if np.isfinite(mean) else float((values / values.size).sum())


def read_window(ds: gdal.Dataset, info: RasterInfo, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The selected bands of a window, as stored (C×h×w)."""
    try:
        return np.stack([ds.GetRasterBand(b).ReadAsArray(x0, y0, w, h) for b in info.bands])
    except RuntimeError as exc:
        raise LatentSRError(f"reading the input failed: {one_line(exc)}") from None


def extent_window(info: RasterInfo, extent: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The pixel window (x0, y0, width, height) of the raster that covers ``extent`` = (xmin, ymin,
    xmax, ymax) in the raster's CRS, clipped to the raster."""
    gt = info.geotransform
    if gt is None:
        raise LatentSRError("the input has no geotransform, so it cannot be clipped to an extent")
    if gt[2] != 0 or gt[4] != 0:
        raise LatentSRError("clipping to an extent needs a north-up raster (this one is rotated)")
    if not (gt[1] and gt[5] and all(np.isfinite(gt))):
        raise LatentSRError(f"the input's geotransform has a zero or non-finite pixel size ({gt[1]:g}, {gt[5]:g}), "
                            "so it cannot be clipped to an extent")
    xmin, ymin, xmax, ymax = extent
    cols = sorted(((xmin - gt[0]) / gt[1], (xmax - gt[0]) / gt[1]))
    rows = sorted(((ymax - gt[3]) / gt[5], (ymin - gt[3]) / gt[5]))
    x0, x1 = max(0, int(np.floor(cols[0]))), min(info.width, int(np.ceil(cols[1])))
    y0, y1 = max(0, int(np.floor(rows[0]))), min(info.height, int(np.ceil(rows[1])))
    if x1 <= x0 or y1 <= y0:
        raise LatentSRError("the extent does not overlap the input raster")
    return x0, y0, x1 - x0, y1 - y0


def clipped(ds: gdal.Dataset, window: tuple[int, int, int, int]) -> gdal.Dataset:
    """A virtual raster of a pixel window of ``ds`` (kept in memory; see release_clip)."""
    return gdal.Translate(f"/vsimem/latentsr-{uuid.uuid4().hex}.vrt", ds, srcWin=list(window), format="VRT")


def release_clip(ds: gdal.Dataset) -> None:
    name = ds.GetDescription()
    if name.startswith("/vsimem/"):
        gdal.Unlink(name)


@contextlib.contextmanager
def window_part(ds: gdal.Dataset, window: tuple[int, int, int, int] | None, bands, info: RasterInfo):
    """(dataset, description) of the pixel ``window`` of ``ds`` (described as ``info``) for the block:
    a virtual raster in memory, released after it; ``ds`` and ``info`` themselves without a window."""
    if not window:
        yield ds, info
        return
    src = clipped(ds, window)
    try:
        yield src, describe(src, bands)
    finally:
        release_clip(src)


def pixel_size(gt: tuple[float, ...]) -> tuple[float, float]:
    """Ground size of one pixel along its columns and rows, in map units (rotation-safe)."""
    return float(np.hypot(gt[1], gt[4])), float(np.hypot(gt[2], gt[5]))


@contextlib.contextmanager
def quiet_gdal():
    """GDAL errors neither raised nor printed inside the block."""
    raising = gdal.GetUseExceptions()
    gdal.DontUseExceptions()
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()
        if raising:
            gdal.UseExceptions()
