"""Outputs that appear under their final name only when they are complete: an output GeoTIFF (or a
VRT of shards) written window by window into a hidden scratch file, packed, and moved into place
together with the run's other outputs (commit_together), under a lock that a second run on the same
output respects."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import uuid
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import numpy as np
from osgeo import gdal

from .errors import LatentSRError
from .guard import check_writable, shards_folder
from .raster import RasterInfo, one_line, quiet_gdal

log = logging.getLogger(__name__)


def output_geotransform(gt: tuple[float, ...], in_w: float, in_h: float, out_w: int, out_h: int,
                        shift_x: float = 0.0, shift_y: float = 0.0) -> tuple[float, ...]:
    """The geotransform of an out_w×out_h grid spanning in_w×in_h input pixels from input pixel
    coordinate (shift_x, shift_y): by default exactly the same extent (rotation terms included)."""
    rx, ry = in_w / out_w, in_h / out_h
    x0 = gt[0] + shift_x * gt[1] + shift_y * gt[2]
    y0 = gt[3] + shift_x * gt[4] + shift_y * gt[5]
    return (x0, gt[1] * rx, gt[2] * ry, y0, gt[4] * rx, gt[5] * ry)


class OutputRaster:
    """A GeoTIFF written window by window into a hidden uncompressed scratch file, then packed
    (tiled, compressed, BigTIFF when needed, or COG) into a second hidden file that is renamed to
    the final name only on success. ``discard`` removes everything; nothing half-written remains.

    A ``virtual`` one is instead a VRT of shards, GeoTIFFs of rectangular blocks of it that others
    write under ``shard_path`` names (engine.cluster), laid out as a mosaic (``add_shard``); they
    are removed with the scratch file. If its name ends in .vrt (``tiled_vrt``), the shards are the
    output's own files, written tiled and compressed by the workers into a hidden folder: staging
    writes only the VRT (sources relative to it), and the folder moves to ``shards_folder(path)``
    together with the VRT; no pixel passes through here."""

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

    def shard_path(self, row: int, col: int) -> str:
        """The name of the shard of the block in row ``row`` and column ``col`` of blocks."""
        if self.tiled_vrt:
            return os.path.join(self.shard_dir, f"block{row:05d}-{col:05d}.tif")
        return f"{self.stem}.shard{row:05d}-{col:05d}.tif"

    def add_shard(self, path: str, x0: int, y0: int, width: int, height: int) -> None:
        """Let the width×height pixels at column x0, row y0 of a virtual output come from the shard
        GeoTIFF at ``path`` (its mask too, when the output has one)."""
        targets = [(self.ds.GetRasterBand(i + 1), str(i + 1)) for i in range(self.ds.RasterCount)]
        if self.masked:
            targets.append((self.ds.GetRasterBand(1).GetMaskBand(), "mask,1"))
        for band, source_band in targets:
            source = (f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{escape(path)}</SourceFilename>"
                      f"<SourceBand>{source_band}</SourceBand>"
                      f"<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{width}\" ySize=\"{height}\"/>"
                      f"<DstRect xOff=\"{x0}\" yOff=\"{y0}\" xSize=\"{width}\" ySize=\"{height}\"/></SimpleSource>")
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
            if not re.fullmatch(r"block\d{5,}-\d{5,}\.tif", name):
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
                         r"shards(\.old)?|shard[\d-]+\.tif(\.[0-9a-f]{8}\.part)?)(\.msk|\.aux\.xml)?")
    for name in os.listdir(folder):
        if pattern.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                remove_path(os.path.join(folder, name))
                log.info("removed %s, left by an earlier run that did not finish", name)


def scaled_gcps(gcps, fx: float, fy: float) -> list:
    """Ground control points moved onto the output pixel grid."""
    return [gdal.GCP(g.GCPX, g.GCPY, g.GCPZ, g.GCPPixel * fx, g.GCPLine * fy, g.Info, g.Id) for g in gcps]
