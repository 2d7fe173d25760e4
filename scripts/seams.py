"""Tiled against untiled: max / mean |difference| in DN of every learned method, scale and detail on
a crop of a raster, at a given tile and overlap (docs/MODELS.md, "Tiles"). The untiled run is one
tile that covers the whole crop.

    .venv/bin/python scripts/seams.py --crop 0 0 320 320 --bands 1 2 3
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np
from osgeo import gdal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.methods import DEFAULTS, RunOptions  # noqa: E402
from engine.pipeline import Request, superresolve  # noqa: E402

NAIP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "geotiff", "naip",
                    "m_4709963_se_14_1_20200831.tif")


def read(path: str) -> np.ndarray:
    return gdal.Open(path).ReadAsArray().astype(np.float64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=NAIP)
    p.add_argument("--crop", type=int, nargs=4, metavar=("X", "Y", "W", "H"), default=(0, 0, 320, 320))
    p.add_argument("--bands", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=["lcmsr", "e2diffsr", "regression"])
    p.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.3, 4.0])
    p.add_argument("--details", nargs="+", default=["0", "default", "1"])
    p.add_argument("--tile", type=int, default=DEFAULTS.tile)
    p.add_argument("--overlap", type=int, default=DEFAULTS.overlap)
    p.add_argument("--backend", default=DEFAULTS.backend)
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        crop = os.path.join(tmp, "crop.tif")
        gdal.Translate(crop, args.input, srcWin=list(args.crop), bandList=args.bands)
        whole = max(args.crop[2:]) + 1
        for name in args.methods:
            details = [None] if name == "regression" else [None if d == "default" else float(d) for d in args.details]
            for scale in args.scales:
                for detail in details:
                    outs = []
                    start = time.perf_counter()
                    for tile, overlap in ((whole, 0), (args.tile, args.overlap)):
                        out = os.path.join(tmp, f"{tile}.tif")
                        options = RunOptions(method=name, detail=detail, seed=args.seed, backend=args.backend)
                        r = superresolve(Request(input=crop, output=out, options=options, scale=scale, tile=tile,
                                                 overlap=overlap))
                        outs.append((read(out), r.tiles))
                        os.remove(out)
                    diff = np.abs(outs[0][0] - outs[1][0])
                    label = "-" if name == "regression" else ("default" if detail is None else f"{detail:g}")
                    print(f"{name:10s} x{scale:<4g} D={label:8s} tiles {outs[1][1]:3d}  max {diff.max():6.2f} DN  "
                          f"mean {diff.mean():.4f} DN  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
