"""Which output paths a run may write, checked before anything is written: never a file that one of
its inputs reads (a VRT's sources, a /vsi* archive, the sidecars), never two outputs on one file,
only a writable regular file, a GeoTIFF name (a .vrt of shards on a cluster)."""
from __future__ import annotations

import os
import tempfile

from osgeo import gdal

from .errors import LatentSRError
from .raster import one_line, quiet_gdal


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
