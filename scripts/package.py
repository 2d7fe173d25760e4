"""Build latentsr.zip, the plugin as QGIS's "Install from ZIP" expects it: one top folder
``latentsr/`` with the metadata, licence, code and resources (icon, sample raster, bundled models,
Processing models), the training code that ``latentsr:train`` runs (not its benchmarks), and no
tests, environments or build outputs.

    python3 scripts/package.py [--output latentsr.zip]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "latentsr"
FILES = ("metadata.txt", "LICENSE", "__init__.py", "plugin.py")
FOLDERS = ("provider", "ui", "engine", "training", "resources")
SKIPPED_FOLDERS = ("__pycache__", "bench")  # training/bench: the benchmarks, not needed to train
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".aux.xml")
log = logging.getLogger("package")


def members(root: str = ROOT):
    """(path on disk, path in the zip) of every packaged file, sorted."""
    for name in FILES:
        yield os.path.join(root, name), f"{NAME}/{name}"
    for folder in FOLDERS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_FOLDERS and not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith(".") or filename.endswith(SKIPPED_SUFFIXES):
                    continue
                path = os.path.join(dirpath, filename)
                yield path, f"{NAME}/{os.path.relpath(path, root).replace(os.sep, '/')}"


def build(output: str, root: str = ROOT) -> list[str]:
    """Write the zip to ``output`` (replacing it) and return the names it holds."""
    missing = [name for name in FILES + FOLDERS if not os.path.exists(os.path.join(root, name))]
    if missing:
        raise FileNotFoundError(f"not a LatentSR plugin folder, missing: {', '.join(missing)}")
    partial = output + ".part"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, arcname in members(root):
            archive.write(path, arcname)
        names = archive.namelist()
    os.replace(partial, output)
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the LatentSR plugin zip.")
    parser.add_argument("--output", default=os.path.join(ROOT, f"{NAME}.zip"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = build(os.path.abspath(args.output))
    size = os.path.getsize(args.output) / 1e6
    log.info("%s: %d files, %.1f MB", os.path.abspath(args.output), len(names), size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
