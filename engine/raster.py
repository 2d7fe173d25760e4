"""GDAL raster I/O: open and describe the input, sampled band statistics, windowed reads, and an
output GeoTIFF that appears under its final name only when it is complete."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import uuid
from dataclasses import dataclass
from xml.sax.saxutils import escape

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


@dataclass(frozen=True)
class BandNorm:
    """An affine map between stored values and the normalised units the methods see."""

    offset: float
    scale: float
    fill: float  # normalised value used where no neighbour can fill a nodata pixel

    def forward(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.offset) / self.scale).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) * self.scale + self.offset


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


def describe(ds: gdal.Dataset, bands: list[int] | None) -> RasterInfo:
    """Geometry and types of the selected bands, validated."""
    count = ds.RasterCount
    bands = list(bands) if bands else list(range(1, count + 1))
    for b in bands:
        if not 1 <= b <= count:
            raise LatentSRError(f"band {b} does not exist: the input has {count} band(s)")
    if len(set(bands)) != len(bands):
        raise LatentSRError("a band is selected twice")
    types = {ds.GetRasterBand(b).DataType for b in bands}
    if len(types) != 1:
        raise LatentSRError("the selected bands have different data types")
    gdal_type = types.pop()
    if gdal_type not in SUPPORTED_TYPES:
        raise LatentSRError(f"data type {gdal.GetDataTypeName(gdal_type)} is not supported")
    return RasterInfo(
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        bands=tuple(bands),
        dtype=np.dtype(SUPPORTED_TYPES[gdal_type]),
        gdal_type=gdal_type,
        nodata=tuple(ds.GetRasterBand(b).GetNoDataValue() for b in bands),
        geotransform=ds.GetGeoTransform(can_return_null=True),
        projection=ds.GetProjection() or "",
    )


def valid_mask(x: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where a pixel holds data: not the nodata value and finite."""
    valid = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, dtype=bool)
    if nodata is not None:
        if np.isnan(nodata):
            return valid
        valid &= x != nodata
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
        values = sample[valid_mask(sample, nodata)].astype(np.float64)
        if values.size == 0:
            raise LatentSRError(f"band {b} has no valid pixels (all nodata)")
        if info.dtype == np.uint8:
            offset, scale = 0.0, 255.0
        else:
            lo, hi = np.percentile(values, [0.1, 99.9])
            offset, scale = float(lo), float(hi - lo) if hi > lo else 1.0
        norms.append(BandNorm(offset, scale, float((values.mean() - offset) / scale)))
    return norms


def read_window(ds: gdal.Dataset, info: RasterInfo, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The selected bands of a window, as stored (C×h×w)."""
    try:
        return np.stack([ds.GetRasterBand(b).ReadAsArray(x0, y0, w, h) for b in info.bands])
    except RuntimeError as exc:
        raise LatentSRError(f"reading the input failed: {one_line(exc)}") from None


def output_geotransform(gt: tuple[float, ...], in_w: int, in_h: int, out_w: int, out_h: int) -> tuple[float, ...]:
    """The geotransform of an out_w×out_h grid over exactly the same extent (rotation terms included)."""
    rx, ry = in_w / out_w, in_h / out_h
    return (gt[0], gt[1] * rx, gt[2] * ry, gt[3], gt[4] * rx, gt[5] * ry)


def extent_window(info: RasterInfo, extent: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The pixel window (x0, y0, width, height) of the raster that covers ``extent`` = (xmin, ymin,
    xmax, ymax) in the raster's CRS, clipped to the raster."""
    gt = info.geotransform
    if gt is None:
        raise LatentSRError("the input has no geotransform, so it cannot be clipped to an extent")
    if gt[2] != 0 or gt[4] != 0:
        raise LatentSRError("clipping to an extent needs a north-up raster (this one is rotated)")
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


def pixel_size(gt: tuple[float, ...]) -> tuple[float, float]:
    """Ground size of one pixel along its columns and rows, in map units (rotation-safe)."""
    return float(np.hypot(gt[1], gt[4])), float(np.hypot(gt[2], gt[5]))


def check_writable(output: str, input_path: str) -> None:
    """Fail early, in one line, when the output cannot be written where asked."""
    if not output:
        raise LatentSRError("no output path given")
    if os.path.exists(input_path) and os.path.exists(output) and os.path.samefile(input_path, output):
        raise LatentSRError("the output would overwrite the input: choose another output path")
    if os.path.abspath(output) == os.path.abspath(input_path):
        raise LatentSRError("the output would overwrite the input: choose another output path")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise LatentSRError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise LatentSRError(f"output folder is not writable: {folder}")
    if os.path.isdir(output):
        raise LatentSRError(f"output is a folder: {output}")


class OutputRaster:
    """A GeoTIFF written window by window into a hidden uncompressed scratch file, then packed
    (tiled, compressed, BigTIFF when needed, or COG) into a second hidden file that is renamed to
    the final name only on success. ``discard`` removes everything; nothing half-written remains.

    A ``virtual`` one is instead a VRT of shards, GeoTIFFs of whole rows that others write under
    ``shard_path`` names (engine.cluster); they are removed with the scratch file."""

    def __init__(self, path: str, src: gdal.Dataset, info: RasterInfo, width: int, height: int,
                 dtype: int | None = None, nodata: list[float | None] | None = None, cog: bool = False,
                 virtual: bool = False):
        self.path = path
        self.cog = cog
        folder, name = os.path.split(os.path.abspath(path))
        self.stem = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}")  # every scratch file starts with it
        self.scratch = self.stem + (".scratch.vrt" if virtual else ".scratch.tif")
        self.packed = self.stem + ".part.tif"
        self.lock = os.path.join(folder, f".{name}.latentsr-lock")
        self.dtype = info.gdal_type if dtype is None else dtype
        self.ds = None
        take_lock(self.lock, path)
        options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "BIGTIFF=IF_NEEDED", "INTERLEAVE=BAND"]
        try:
            if virtual:
                self.ds = gdal.GetDriverByName("VRT").Create(self.scratch, width, height, len(info.bands), self.dtype)
            else:
                self.ds = gdal.GetDriverByName("GTiff").Create(self.scratch, width, height, len(info.bands),
                                                               self.dtype, options)
        except RuntimeError as exc:
            self.discard()
            raise LatentSRError(f"cannot create the output: {one_line(exc)}") from None
        gt = info.geotransform
        if gt is not None:
            self.ds.SetGeoTransform(output_geotransform(gt, info.width, info.height, width, height))
        elif src.GetGCPCount():
            self.ds.SetGCPs(scaled_gcps(src.GetGCPs(), width / info.width, height / info.height), src.GetGCPProjection())
        if info.projection:
            self.ds.SetProjection(info.projection)
        nodata = list(info.nodata) if nodata is None else nodata
        for i, b in enumerate(info.bands):
            sband, oband = src.GetRasterBand(b), self.ds.GetRasterBand(i + 1)
            if nodata[i] is not None:
                oband.SetNoDataValue(nodata[i])
            oband.SetDescription(sband.GetDescription())
            oband.SetColorInterpretation(sband.GetColorInterpretation())
            if sband.GetScale() not in (None, 1.0) or sband.GetOffset() not in (None, 0.0):
                oband.SetScale(sband.GetScale() or 1.0)
                oband.SetOffset(sband.GetOffset() or 0.0)
            if sband.GetUnitType():
                oband.SetUnitType(sband.GetUnitType())
        metadata = src.GetMetadata() or {}
        if metadata:
            self.ds.SetMetadata(metadata)

    def shard_path(self, index: int) -> str:
        return f"{self.stem}.shard{index:05d}.tif"

    def add_shard(self, path: str, y0: int, height: int) -> None:
        """Let the rows y0..y0+height-1 of a virtual output come from the shard GeoTIFF at ``path``."""
        width = self.ds.RasterXSize
        for i in range(self.ds.RasterCount):
            source = (f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{escape(path)}</SourceFilename>"
                      f"<SourceBand>{i + 1}</SourceBand>"
                      f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{width}\" ySize=\"{height}\"/>"
                      f"<DstRect xOff=\"0\" yOff=\"{y0}\" xSize=\"{width}\" ySize=\"{height}\"/></SimpleSource>")
            self.ds.GetRasterBand(i + 1).SetMetadataItem("source_0", source, "new_vrt_sources")

    def write(self, data: np.ndarray, x0: int, y0: int) -> None:
        """Write C×h×w ``data`` at column x0, row y0."""
        def write_bands():
            for i in range(data.shape[0]):
                self.ds.GetRasterBand(i + 1).WriteArray(data[i], x0, y0)
        self._writing(write_bands)

    def flush(self) -> None:
        """Write the blocks GDAL holds for this output to the scratch file and drop them from its
        cache, so that the cache does not grow with the raster."""
        self._writing(lambda: self.ds.FlushCache())  # not the bound method: it would keep the dataset alive

    @staticmethod
    def _writing(action) -> None:
        """Run a GDAL write; its failure becomes a one-line LatentSRError."""
        try:
            action()
            return
        except RuntimeError as exc:
            message = one_line(exc)
            with quiet_gdal():  # as in commit(): the failed call's frames must not outlive discard()
                exc.__traceback__ = None
        raise LatentSRError(f"writing the output failed: {message}")

    def commit(self) -> None:
        """Pack the scratch file into the final GeoTIFF and move it into place."""
        try:
            self._pack()
            return
        except (RuntimeError, OSError) as exc:
            message = one_line(exc)
            with quiet_gdal():  # drop the failed call's frames, and the datasets they hold, without noise
                exc.__traceback__ = None
        self.discard()
        raise LatentSRError(f"writing the output failed: {message}")

    def _pack(self) -> None:
        self.ds.FlushCache()
        self.ds = None
        predictor = "3" if gdal.GetDataTypeName(self.dtype).startswith("Float") else "2"
        if self.cog:
            options = gdal.TranslateOptions(format="COG", creationOptions=[
                "COMPRESS=DEFLATE", f"PREDICTOR={predictor}", "BIGTIFF=IF_SAFER"])
        else:
            options = gdal.TranslateOptions(format="GTiff", creationOptions=[
                "TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE",
                f"PREDICTOR={predictor}", "BIGTIFF=IF_SAFER"])
        out = gdal.Translate(self.packed, self.scratch, options=options)
        if out is None:
            raise RuntimeError("GDAL could not write the packed GeoTIFF")
        out.FlushCache()
        out = None
        os.replace(self.packed, self.path)
        for stale in (self.path + ".aux.xml", self.path + ".ovr", self.scratch, *self.shards(), self.lock):
            self._remove(stale)  # the scratch files, the lock, and sidecars of an older output

    def discard(self) -> None:
        with quiet_gdal():  # closing flushes what is cached; on a full disk that fails, and it does not matter now
            self.ds = None
        for p in (self.scratch, self.packed, *self.shards(), self.lock):
            self._remove(p)

    def shards(self) -> list[str]:
        """The shard files of this output, finished or not."""
        return glob.glob(glob.escape(self.stem) + ".shard*")

    @staticmethod
    def _remove(path: str) -> None:
        for p in (path, path + ".aux.xml"):
            if os.path.exists(p):
                os.remove(p)


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


def take_lock(lock: str, path: str) -> None:
    """Claim the output for this process; a second run writing the same output is refused. A lock
    left by a process that no longer exists is taken over."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(lock) as f:
                    owner = int(f.read().strip() or 0)
                os.kill(owner, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                if os.path.exists(lock):
                    os.remove(lock)
                continue
            except PermissionError:
                pass
            raise LatentSRError(f"another run is already writing {path}") from None
        except OSError as exc:
            raise LatentSRError(f"cannot create the output in {os.path.dirname(lock)}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return
    raise LatentSRError(f"another run is already writing {path}")


def scaled_gcps(gcps, fx: float, fy: float) -> list:
    """Ground control points moved onto the output pixel grid."""
    return [gdal.GCP(g.GCPX, g.GCPY, g.GCPZ, g.GCPPixel * fx, g.GCPLine * fy, g.Info, g.Id) for g in gcps]
