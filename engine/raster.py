"""GDAL raster I/O: open and describe the input, sampled band statistics, windowed reads, and an
output GeoTIFF that appears under its final name only when it is complete."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from xml.etree import ElementTree
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


def output_geotransform(gt: tuple[float, ...], in_w: float, in_h: float, out_w: int, out_h: int,
                        shift_x: float = 0.0, shift_y: float = 0.0) -> tuple[float, ...]:
    """The geotransform of an out_w×out_h grid spanning in_w×in_h input pixels from input pixel
    coordinate (shift_x, shift_y): by default exactly the same extent (rotation terms included)."""
    rx, ry = in_w / out_w, in_h / out_h
    x0 = gt[0] + shift_x * gt[1] + shift_y * gt[2]
    y0 = gt[3] + shift_x * gt[4] + shift_y * gt[5]
    return (x0, gt[1] * rx, gt[2] * ry, y0, gt[4] * rx, gt[5] * ry)


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


def pixel_size(gt: tuple[float, ...]) -> tuple[float, float]:
    """Ground size of one pixel along its columns and rows, in map units (rotation-safe)."""
    return float(np.hypot(gt[1], gt[4])), float(np.hypot(gt[2], gt[5]))


SIDECARS = (".aux.xml", ".ovr", ".msk")  # files GDAL reads beside a raster, and writes beside an output
REMOTE = ("/vsimem/", "/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift", "/vsihdfs",
          "/vsiwebhdfs", "/vsistdin", "/vsistdout")


def local_file(name: str) -> str | None:
    """The local file behind a GDAL name: ``/vsizip/a.zip/b.tif`` -> a.zip (through any chain of
    /vsi* prefixes), ``GTIFF_DIR:1:a.tif`` or ``NETCDF:"a.nc":var`` -> the file named in it; None
    when nothing local is behind it (/vsimem/, /vsicurl/...)."""
    while name.startswith("/vsi"):
        if name.startswith(REMOTE):
            return None
        rest = name[1:].partition("/")[2]
        if rest.startswith("{"):  # /vsizip/{/path/a.zip}/inner
            name = rest[1:].split("}")[0]
            continue
        if rest.startswith("/vsi"):
            name = rest
            continue
        parts = rest.split("/")  # the archive or compressed file is the longest prefix that is a file
        found = next(("/".join(parts[:k]) for k in range(len(parts), 0, -1)
                      if "/".join(parts[:k]) and os.path.isfile("/".join(parts[:k]))), None)
        if found is None:
            return None
        name = found
    if os.path.exists(name):
        return name
    pieces = name.split('"')[1::2] + [p.strip('"') for p in name.split(":")]
    return next((p for p in pieces if p and os.path.isfile(p)), None)


def source_files(path: str, ds: gdal.Dataset | None = None, _seen: set | None = None) -> set[str]:
    """Every local file GDAL reads for the raster ``path`` (``ds`` when it is open already): its
    file list, the sources of a VRT (nested VRTs included), the file behind a /vsi* or subdataset
    name, and the sidecars (.aux.xml, .ovr, .msk) of each, whether they exist or not."""
    seen = set() if _seen is None else _seen
    if ds is None:
        try:
            with quiet_gdal():
                ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
        except RuntimeError:
            ds = None
    names = {path} | (set(ds.GetFileList() or []) | {ds.GetDescription()} if ds is not None else set())
    files = set()
    for name in names:
        real = local_file(name)
        if real is None or file_key(real) in seen:
            continue
        seen.add(file_key(real))
        files.add(real)
        files.update(real + ext for ext in SIDECARS)
        if real.lower().endswith(".vrt") and len(seen) < 10_000:  # a VRT of VRTs lists only the first level
            files |= source_files(real, None, seen)
    return files


def file_key(path: str) -> tuple:
    """What identifies a file: its device and inode when it exists (hard links and symlinks match),
    else its resolved absolute path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return ("path", os.path.realpath(os.path.abspath(path)))


def check_outputs(outputs: dict[str, str | None], inputs: dict[str, tuple[str, gdal.Dataset | None]]) -> None:
    """Refuse, in one line, any output that is (or whose sidecars are) a file one of ``inputs``
    reads, two outputs that are the same file or one of which is the other's sidecar (.aux.xml,
    .ovr, .msk: writing an output removes its older sidecars), and an output path that cannot be
    written.
    ``outputs`` maps a role ("output", "HTML report"...) to a path; ``inputs`` maps a role to
    (path, open dataset or None)."""
    read = {}
    for role, (path, ds) in inputs.items():
        if path:
            for f in source_files(path, ds):
                read.setdefault(file_key(f), (role, path, f))
    seen = {}  # file key -> (role, path, sidecar extension or "") of each output and of its sidecars
    for role, path in outputs.items():
        if path is None:
            continue
        check_writable(path)
        for written in [path] + [path + ext for ext in SIDECARS]:
            hit = read.get(file_key(written))
            if hit:
                role_in, path_in, f = hit
                via = "" if file_key(path_in) == file_key(written) else f" (it reads {f})"
                raise LatentSRError(f"the {role} {path} would overwrite the {role_in} {path_in}{via}: "
                                    "choose another output path")
        if path.lower().endswith(".vrt"):  # its shards folder is replaced too
            folder = os.path.realpath(shards_folder(path))
            for role_in, path_in, f in read.values():
                if os.path.realpath(f).startswith(folder + os.sep):
                    raise LatentSRError(f"the {role} {path} would replace its shards folder {folder}, which the "
                                        f"{role_in} {path_in} reads ({f}): choose another output path")
        names = [(path, "")] + [(path + ext, ext) for ext in SIDECARS]
        for written, ext in names:
            other = seen.get(file_key(written))
            if other is None or (ext and other[2]):
                continue
            if not ext and not other[2]:
                raise LatentSRError(f"the {other[0]} {other[1]} and the {role} {path} are the same file: "
                                    "give them different paths")
            owner, sidecar = ((other[0], other[1]), (role, path)) if other[2] else ((role, path), (other[0], other[1]))
            raise LatentSRError(f"the {sidecar[0]} {sidecar[1]} is the {other[2] or ext} sidecar of the {owner[0]} "
                                f"{owner[1]}: writing one would destroy the other; give them different paths")
        for written, ext in names:
            seen.setdefault(file_key(written), (role, path, ext))


def check_writable(output: str) -> None:
    """Fail early, in one line, when the output cannot be written where asked."""
    if not output:
        raise LatentSRError("no output path given")
    if "\0" in output:
        raise LatentSRError("the output path contains a NUL character")
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise LatentSRError(f"output is a folder: {output}")
    if os.path.lexists(output) and not os.path.isfile(output):
        raise LatentSRError(f"output exists and is not a regular file: {output}")
    if not os.path.isdir(folder):
        raise LatentSRError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise LatentSRError(f"output folder is not writable: {folder}")
    try:  # access() does not see everything (root on /sys or /proc, ACLs, some network mounts): try it
        fd, probe = tempfile.mkstemp(prefix=".latentsr-probe-", dir=folder)
    except OSError as exc:
        raise LatentSRError(f"output folder cannot be written: {folder} ({exc.strerror or one_line(exc)})") from None
    os.close(fd)
    os.remove(probe)


def check_tif_name(path: str | None, role: str, vrt: bool = False) -> None:
    """Refuse, in one line, a GeoTIFF output whose name does not end in .tif or .tiff, or, where
    ``vrt`` allows it (a cluster run), .vrt: a VRT of GeoTIFF shards (OutputRaster)."""
    ext = os.path.splitext(path or "")[1].lower()
    if ext == ".vrt" and not vrt:
        raise LatentSRError(f"a .vrt {role} is a VRT of GeoTIFF shards that the workers of a cluster write: give "
                            f"--cluster (local:N on one machine), or a .tif name: {path}")
    if ext not in ("", ".tif", ".tiff", *([".vrt"] if vrt else [])):
        raise LatentSRError(f"the {role} is written as a GeoTIFF, so its name must end in .tif or .tiff"
                            f"{' (or .vrt)' if vrt else ''}, not {ext}: {path}")


def shards_folder(path: str) -> str:
    """The folder of the GeoTIFF shards of the .vrt output ``path``: x.vrt has x.shards beside it."""
    return os.path.splitext(os.path.abspath(path))[0] + ".shards"


class OutputRaster:
    """A GeoTIFF written window by window into a hidden uncompressed scratch file, then packed
    (tiled, compressed, BigTIFF when needed, or COG) into a second hidden file that is renamed to
    the final name only on success. ``discard`` removes everything; nothing half-written remains.

    A ``virtual`` one is instead a VRT of shards, GeoTIFFs of whole rows that others write under
    ``shard_path`` names (engine.cluster); they are removed with the scratch file. If its name ends
    in .vrt (``tiled_vrt``), the shards are the output's own files, written tiled and compressed by
    the workers into a hidden folder: staging writes only the VRT (sources relative to it), and the
    folder moves to ``shards_folder(path)`` together with the VRT; no pixel passes through here."""

    def __init__(self, path: str, src: gdal.Dataset, info: RasterInfo, width: int, height: int,
                 dtype: int | None = None, nodata: list[float | None] | None = None, cog: bool = False,
                 axes: tuple | None = None, virtual: bool = False):
        self.path = path
        self.cog = cog
        folder, name = os.path.split(os.path.abspath(path))
        self.stem = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}")  # every scratch file starts with it
        self.scratch = self.stem + (".scratch.vrt" if virtual else ".scratch.tif")
        self.tiled_vrt = virtual and path.lower().endswith(".vrt")
        self.packed = self.stem + (".part.vrt" if self.tiled_vrt else ".part.tif")
        self.shard_dir = self.stem + ".shards"  # a tiled_vrt's shards until they move to shards_folder(path)
        if self.tiled_vrt and cog:
            raise LatentSRError(f"a COG is one file: give the output a .tif name, not {name}")
        self.lock = os.path.join(folder, f".{name}.latentsr-lock")
        self.dtype = info.gdal_type if dtype is None else dtype
        self.signed = info.signed_byte and dtype is None
        self.masked = info.masked  # the output gets an internal per-dataset mask: 0 where no band holds data
        self.ds = None
        check_size(folder, width, height, len(info.bands), self.dtype)
        take_lock(self.lock, path, scratch_prefix=f".{name}.")
        try:
            self._create(src, info, width, height, nodata, axes, virtual)
        except BaseException:  # a failure, or a Ctrl-C, after the scratch file exists: nothing may stay
            self.discard()
            raise

    def _create(self, src: gdal.Dataset, info: RasterInfo, width: int, height: int,
                nodata: list[float | None] | None, axes: tuple | None, virtual: bool) -> None:
        options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "BIGTIFF=IF_NEEDED", "INTERLEAVE=BAND"]
        if self.signed:
            options.append("PIXELTYPE=SIGNEDBYTE")
        if self.tiled_vrt:
            try:
                os.mkdir(self.shard_dir)
            except OSError as exc:
                raise LatentSRError(f"cannot create the output's shards folder: {exc.strerror or exc}") from None
        try:
            with internal_masks():
                if virtual:
                    self.ds = gdal.GetDriverByName("VRT").Create(self.scratch, width, height, len(info.bands),
                                                                 self.dtype)
                    if self.signed:
                        for i in range(len(info.bands)):
                            self.ds.GetRasterBand(i + 1).SetMetadataItem("PIXELTYPE", "SIGNEDBYTE", "IMAGE_STRUCTURE")
                else:
                    self.ds = gdal.GetDriverByName("GTiff").Create(self.scratch, width, height, len(info.bands),
                                                                   self.dtype, options)
                if self.masked:
                    self.ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        except RuntimeError as exc:
            raise LatentSRError(f"cannot create the output: {one_line(exc)}") from None
        gt = info.geotransform
        if gt is not None and axes is not None:  # (x, y) engine.grid.Axis: the output grid, possibly grown or shifted
            self.ds.SetGeoTransform(output_geotransform(gt, axes[0].span, axes[1].span, width, height,
                                                        axes[0].shift, axes[1].shift))
        elif gt is not None:
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
        if self.tiled_vrt:
            return os.path.join(self.shard_dir, f"rows{index:05d}.tif")
        return f"{self.stem}.shard{index:05d}.tif"

    def add_shard(self, path: str, y0: int, height: int) -> None:
        """Let the rows y0..y0+height-1 of a virtual output come from the shard GeoTIFF at ``path``
        (its mask too, when the output has one)."""
        width = self.ds.RasterXSize
        targets = [(self.ds.GetRasterBand(i + 1), str(i + 1)) for i in range(self.ds.RasterCount)]
        if self.masked:
            targets.append((self.ds.GetRasterBand(1).GetMaskBand(), "mask,1"))
        for band, source_band in targets:
            source = (f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{escape(path)}</SourceFilename>"
                      f"<SourceBand>{source_band}</SourceBand>"
                      f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{width}\" ySize=\"{height}\"/>"
                      f"<DstRect xOff=\"0\" yOff=\"{y0}\" xSize=\"{width}\" ySize=\"{height}\"/></SimpleSource>")
            band.SetMetadataItem("source_0", source, "new_vrt_sources")

    def write(self, data: np.ndarray, x0: int, y0: int, valid: np.ndarray | None = None) -> None:
        """Write C×h×w ``data`` at column x0, row y0; with a mask, ``valid`` (C×h×w) sets it: a
        pixel is masked where no band is valid."""
        def write_bands():
            for i in range(data.shape[0]):
                self.ds.GetRasterBand(i + 1).WriteArray(data[i], x0, y0)
            if self.masked and valid is not None:
                mask = self.ds.GetRasterBand(1).GetMaskBand()
                mask.WriteArray(np.where(valid.any(axis=0), 255, 0).astype(np.uint8), x0, y0)
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
        """Pack the scratch file into the final GeoTIFF and move it into place (commit_together)."""
        commit_together([self])

    def stage(self) -> None:
        """Pack the scratch file into the hidden ``packed`` file beside the final name (a tiled_vrt:
        write its VRT there)."""
        try:
            self._write_vrt() if self.tiled_vrt else self._pack()
            return
        except (RuntimeError, OSError) as exc:
            message = one_line(exc)
            with quiet_gdal():  # drop the failed call's frames, and the datasets they hold, without noise
                exc.__traceback__ = None
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
        with internal_masks():
            out = gdal.Translate(self.packed, self.scratch, options=options)
        if out is None:
            raise RuntimeError("GDAL could not write the packed GeoTIFF")
        out.FlushCache()
        out = None

    def _write_vrt(self) -> None:
        """The scratch VRT with each source named relative to the VRT, in the shards folder it will
        have under its final name; a killed worker's unfinished shard (a .part file) is removed."""
        self.ds.FlushCache()
        self.ds = None
        for name in os.listdir(self.shard_dir):
            if not re.fullmatch(r"rows\d{5}\.tif", name):
                self._remove(os.path.join(self.shard_dir, name))
        tree = ElementTree.parse(self.scratch)
        folder = os.path.basename(shards_folder(self.path))
        for source in tree.iter("SourceFilename"):
            source.text = f"{folder}/{os.path.basename(source.text)}"
            source.set("relativeToVRT", "1")
        tree.write(self.packed, encoding="UTF-8")

    def moves(self) -> list[tuple[str, str]]:
        """(staged, final) names, in the order they move into place (install): a tiled_vrt's shards
        folder before its VRT."""
        return ([(self.shard_dir, shards_folder(self.path))] if self.tiled_vrt else []) + [(self.packed, self.path)]

    def finish(self) -> None:
        """Once the output is in place: remove its scratch files, its lock, and the sidecars of the
        older output it replaced."""
        for stale in (self.path + ".aux.xml", self.path + ".ovr", self.path + ".msk", self.scratch, *self.shards(),
                      self.lock):
            self._remove(stale)

    def discard(self) -> None:
        with quiet_gdal():  # closing flushes what is cached; on a full disk that fails, and it does not matter now
            self.ds = None
        for p in (self.scratch, self.packed, *self.shards(), self.lock):
            self._remove(p)

    def shards(self) -> list[str]:
        """The shard files (or a tiled_vrt's shards folder) of this output, finished or not."""
        return glob.glob(glob.escape(self.stem) + ".shard*")

    @staticmethod
    def _remove(path: str) -> None:
        for p in (path, path + ".aux.xml", path + ".msk"):
            remove_path(p)


class OutputText:
    """A text output (the HTML report), written into a hidden file beside its final name and moved
    into place with the run's other outputs (commit_together), so that a failed write never
    truncates the older file."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.text = text
        folder, name = os.path.split(os.path.abspath(path))
        self.packed = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.part")

    def stage(self) -> None:
        try:
            with open(self.packed, "w", encoding="utf-8") as f:
                f.write(self.text)
        except OSError as exc:
            raise LatentSRError(f"writing {self.path} failed: {exc.strerror or one_line(exc)}") from None

    def moves(self) -> list[tuple[str, str]]:
        return [(self.packed, self.path)]

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        if os.path.exists(self.packed):
            os.remove(self.packed)


def remove_path(path: str) -> None:
    """Remove the file, link or folder (with what it holds) at ``path``, if any."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def commit_together(outputs: list) -> None:
    """Put all ``outputs`` of a run (OutputRaster, OutputText) in place, or none of them. Each is
    first staged into its hidden file beside its final name (a raster packed, a report written);
    only once all are, they are moved into place in order (install). On any failure every output
    is discarded and each final name holds the file it held before."""
    try:
        for out in outputs:
            out.stage()
        install([move for out in outputs for move in out.moves()])
    except BaseException:
        for out in outputs:
            out.discard()
        raise
    for out in outputs:
        out.finish()


def install(moves: list[tuple[str, str]]) -> None:
    """Move each staged file (or folder: a .vrt output's shards) onto its final name. The file a
    final name held is kept meanwhile (as a hard link, or moved aside where the file system has
    none, and always for a folder), so that if a later move fails the moves already done are undone:
    each final name gets its older file back, or is removed if it had none."""
    for staged, path in moves:
        if os.path.isdir(staged):  # a folder replaces a folder (the older output's shards), nothing else
            if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)):
                raise LatentSRError(f"the output's shards folder {path} is taken by a file: remove it or choose "
                                    f"another output path")
        else:
            check_writable(path)  # a folder or a FIFO that took a final name during the run: refused before any move
    done = []  # per move: [final name, its older file's backup or None, whether that is a hard link, moved]
    try:
        for staged, path in moves:
            entry = [path, None, False, False]
            done.append(entry)
            entry[1:3] = keep_aside(path, staged + ".old")
            try:
                os.replace(staged, path)
            except OSError as exc:
                raise LatentSRError(f"writing the output failed: it cannot be moved into place at {path}: "
                                    f"{exc.strerror or one_line(exc)}") from None
            entry[3] = True
    except BaseException:
        for entry in reversed(done):
            put_back(*entry)
        raise
    for _, backup, _, _ in done:
        if backup:
            remove_path(backup)


def keep_aside(path: str, backup: str) -> tuple[str | None, bool]:
    """Keep the file at ``path`` (if any) at ``backup`` too: (``backup``, whether it is a hard link
    and ``path`` still holds the file), or (None, False) when ``path`` holds nothing."""
    if not os.path.lexists(path):
        return None, False
    if os.path.isdir(path) and not os.path.islink(path):  # a folder cannot be hard-linked
        os.replace(path, backup)
        return backup, False
    try:
        os.link(path, backup, follow_symlinks=False)
        return backup, True
    except OSError:  # no hard links on this file system: the older file is moved aside instead
        os.replace(path, backup)
        return backup, False


def put_back(path: str, backup: str | None, linked: bool, moved: bool) -> None:
    """Undo one move of install: ``path`` gets its older file back, or loses the new one."""
    try:
        if backup and (moved or not linked):
            if moved and os.path.isdir(path) and not os.path.islink(path):  # the new folder goes first
                remove_path(path)
            os.replace(backup, path)
        elif backup:  # the move did not happen: ``path`` still holds its older file
            os.remove(backup)
        elif moved:
            remove_path(path)
    except OSError as exc:
        log.error("could not put back the older file of %s (%s)%s", path, exc.strerror,
                  f"; it is kept at {backup}" if backup else "")


BIGTIFF_MAX_SIDE = 2**31 - 1  # GDAL's GeoTIFF driver keeps the raster size in signed 32-bit integers
SPACE_MARGIN = 1.05  # headroom for TIFF structure and the block index


def check_size(folder: str, width: int, height: int, bands: int, gdal_type: int) -> None:
    """Refuse up front an output the GeoTIFF format cannot hold, or that the disk cannot: the
    uncompressed scratch file plus, in the worst case, a packed copy as large (before the scratch
    file is removed)."""
    if max(width, height) > BIGTIFF_MAX_SIDE:
        raise LatentSRError(f"the output would be {width}×{height} pixels, more than a GeoTIFF holds "
                            f"({BIGTIFF_MAX_SIDE:,} a side): clip the input (--extent) or use a smaller scale")
    need = 2 * SPACE_MARGIN * width * height * bands * gdal.GetDataTypeSize(gdal_type) // 8
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows) or the folder vanished: GDAL will say
        return
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise LatentSRError(f"the output needs up to {need / 2**30:,.1f} GiB in {folder} (an uncompressed scratch file "
                            f"and the packed GeoTIFF) and only {free / 2**30:,.1f} GiB are free: clip the input "
                            "(--extent) or free some space")


@contextlib.contextmanager
def internal_masks():
    """GeoTIFF masks written inside the file, never as a .msk sidecar (GDAL 3.6 writes sidecars by
    default, and a sidecar would not follow the packed file to its final name)."""
    previous = gdal.GetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", None)
    gdal.SetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", "YES")
    try:
        yield
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", previous)


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


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc), or "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def lock_owner_alive(lock: str) -> tuple[bool, str]:
    """(whether the run that wrote ``lock`` still runs, its PID). A lock names its process's PID and
    start time, so a live, unrelated process that reuses the PID does not hold it."""
    try:
        with open(lock) as f:
            fields = f.read().split()
    except FileNotFoundError:
        return False, ""
    try:
        pid = int(fields[0]) if fields else 0
    except ValueError:
        return False, ""
    if pid <= 0:
        return False, ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, str(pid)
    except PermissionError:
        pass
    started = process_start(pid)
    if len(fields) > 1 and started and fields[1] != started:
        return False, str(pid)
    return True, str(pid)


def take_lock(lock: str, path: str, scratch_prefix: str = "") -> None:
    """Claim the output for this process; a second run writing the same output is refused. A lock
    left by a process that no longer exists is taken over, and the scratch files that run left
    beside the output (``scratch_prefix``*.scratch.tif / .part.tif) are removed."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if os.path.isdir(lock) or not os.path.isfile(lock):
                raise LatentSRError(f"the lock file of {path} is taken by a folder or another non-file: {lock}; "
                                    "remove it or choose another output path") from None
            alive, pid = lock_owner_alive(lock)
            if alive:
                raise LatentSRError(f"another run (process {pid}) is already writing {path}; if no run is, delete "
                                    f"the lock file {lock}") from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
            continue
        except OSError as exc:
            raise LatentSRError(f"cannot create the output in {os.path.dirname(lock)}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {process_start(os.getpid())}\n")
        if scratch_prefix:
            remove_stale_scratch(os.path.dirname(lock), scratch_prefix)
        return
    raise LatentSRError(f"another run is already writing {path}; if no run is, delete the lock file {lock}")


def remove_stale_scratch(folder: str, prefix: str) -> None:
    """Remove the scratch and part files of earlier runs on the same output (this run holds its
    lock, so no live run owns them)."""
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{8}\.(scratch\.tif|scratch\.vrt|part\.(tif|vrt)(\.old)?|"
                         r"shards(\.old)?|shard\d{5}\.tif(\.[0-9a-f]{8}\.part)?)(\.msk|\.aux\.xml)?")
    for name in os.listdir(folder):
        if pattern.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                remove_path(os.path.join(folder, name))
                log.info("removed %s, left by an earlier run that did not finish", name)


def scaled_gcps(gcps, fx: float, fy: float) -> list:
    """Ground control points moved onto the output pixel grid."""
    return [gdal.GCP(g.GCPX, g.GCPY, g.GCPZ, g.GCPPixel * fx, g.GCPLine * fy, g.Info, g.Id) for g in gcps]
