"""latentsr:superresolve through Processing, in process and headless with qgis_process.bin."""
import json
import os
import subprocess

import numpy as np
import pytest
from osgeo import gdal

from engine.pipeline import Request, superresolve
from engine.raster import output_geotransform

from tests.conftest import LANDSAT, SAMPLE


def test_algorithm_parameters(provider):
    alg = provider.algorithm("superresolve")
    names = [p.name() for p in alg.parameterDefinitions()]
    for name in ("INPUT", "BANDS", "SCALE", "TARGET_RESOLUTION", "METHOD", "STEPS", "DETAIL", "BACKEND", "DEVICE",
                 "TILE_SIZE", "OVERLAP", "SEED", "SAMPLES", "CLUSTER", "OUTPUT", "OUTPUT_UNCERTAINTY"):
        assert name in names
        assert alg.parameterDefinition(name).help()
    assert alg.parameterDefinition("METHOD").options()[0].startswith("LCMSR")
    assert alg.parameterDefinition("METHOD").defaultValue() == 0
    advanced = {p.name() for p in alg.parameterDefinitions() if p.flags() & p.FlagAdvanced}
    assert {"TILE_SIZE", "OVERLAP", "SEED", "BACKEND", "CLUSTER"} <= advanced


def test_processing_run(provider, tmp_path):
    import processing

    out = str(tmp_path / "sr.tif")
    result = processing.run("latentsr:superresolve", {"INPUT": LANDSAT, "SCALE": 2.5, "METHOD": 3, "BANDS": [3, 2],
                                                       "TILE_SIZE": 128, "OVERLAP": 16, "OUTPUT": out})
    assert result["OUTPUT"] == out
    src, ds = gdal.Open(LANDSAT), gdal.Open(out)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (1743, 943, 2)
    # the extent is kept exactly: the pixel size is in_extent / out_size; CRS, type and nodata are kept
    assert ds.GetGeoTransform() == pytest.approx(output_geotransform(src.GetGeoTransform(), src.RasterXSize,
                                                                     src.RasterYSize, 1743, 943), rel=1e-12)
    assert ds.GetSpatialRef().IsSame(src.GetSpatialRef())
    for k, b in enumerate((3, 2), start=1):
        assert ds.GetRasterBand(k).DataType == src.GetRasterBand(b).DataType
        assert ds.GetRasterBand(k).GetNoDataValue() == src.GetRasterBand(b).GetNoDataValue()
    # the parameters reach the engine as they are: the same pixels as the engine's own run of that request
    direct = str(tmp_path / "direct.tif")
    superresolve(Request(input=LANDSAT, output=direct, scale=2.5, method="bicubic", bands=[3, 2], tile=128, overlap=16))
    np.testing.assert_array_equal(ds.ReadAsArray(), gdal.Open(direct).ReadAsArray())


def test_processing_bad_input_raises(provider, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "sr.tif"
    with pytest.raises(QgsProcessingException, match="greater than 1"):
        processing.run("latentsr:superresolve", {"INPUT": SAMPLE, "SCALE": 1.0, "METHOD": 3, "OUTPUT": str(out)})
    with pytest.raises(QgsProcessingException, match="smaller than the tile"):
        processing.run("latentsr:superresolve", {"INPUT": SAMPLE, "SCALE": 2.0, "METHOD": 3, "TILE_SIZE": 32,
                                                 "OVERLAP": 40, "OUTPUT": str(out)})
    assert os.listdir(tmp_path) == []


def qgis_process_superresolve(env, *params: str) -> dict:
    """Run latentsr:superresolve through qgis_process.bin; its JSON result (the run must succeed)."""
    r = subprocess.run(["/usr/bin/qgis_process.bin", "--json", "run", "latentsr:superresolve", "--", *params],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout[r.stdout.index("{"):])


def test_qgis_process_headless(qgis_env, tmp_path):
    out = tmp_path / "sr.tif"
    result = qgis_process_superresolve(qgis_env, f"INPUT={SAMPLE}", "SCALE=3.7", "METHOD=3", f"OUTPUT={out}")
    assert result["results"]["OUTPUT"] == str(out)
    ds = gdal.Open(str(out))
    assert (ds.RasterXSize, ds.RasterYSize) == (947, 947)


def test_qgis_process_target_resolution_gives_exact_pixels(qgis_env, tmp_path):
    out = tmp_path / "sr.tif"
    qgis_process_superresolve(qgis_env, f"INPUT={SAMPLE}", "TARGET_RESOLUTION=3", "METHOD=3", f"OUTPUT={out}")
    src, ds = gdal.Open(SAMPLE), gdal.Open(str(out))
    x0, px, _, y0, _, py = src.GetGeoTransform()  # 256 × 256 pixels of 5 m
    assert ds.GetGeoTransform() == (x0, 3.0, 0.0, y0, 0.0, -3.0)
    assert (ds.RasterXSize, ds.RasterYSize) == (427, 427)  # 1280 m grown to 1281 m: whole 3 m pixels


@pytest.mark.parametrize("name", ["superresolve", "evaluate"])
def test_help_text_renders_in_full_as_rich_text(provider, name):
    from qgis.PyQt.QtGui import QTextDocument

    alg = provider.algorithm(name)
    document = QTextDocument()
    document.setHtml(alg.shortHelpString())  # how the Processing dialog reads it
    shown = document.toPlainText()
    for param in alg.parameterDefinitions():
        assert param.name() in shown and param.help() in shown
    if name == "superresolve":
        assert "1 < scale ≤ 8" in shown and "exactly R × R" in shown


def test_png_output_is_refused_in_processing_and_the_cli(provider, tmp_path):
    import sys

    import processing
    from qgis.core import QgsProcessingException

    out = str(tmp_path / "sr.png")
    with pytest.raises(QgsProcessingException, match=r"must end in \.tif or \.tiff, not \.png"):
        processing.run("latentsr:superresolve", {"INPUT": SAMPLE, "SCALE": 2, "METHOD": 3, "OUTPUT": out})
    r = subprocess.run([sys.executable, "-m", "engine", "superresolve", SAMPLE, out, "--scale", "2", "--method", "bicubic"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "must end in .tif or .tiff, not .png" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []
