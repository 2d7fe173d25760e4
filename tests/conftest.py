"""Shared fixtures. The repo root is on sys.path for the engine (`import engine`), build/plugins
for the plugin package (`import latentsr`), and QGIS's own Python plugins for `processing`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal, osr

# A suite started in the background by a non-interactive shell (`nohup make test &`) inherits SIGINT
# ignored, and so would every CLI the tests start, whose Ctrl-C tests would then see no interrupt:
# the tests' processes take Ctrl-C as a terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(ROOT, "build", "plugins")
DATA = os.path.abspath(os.path.join(ROOT, "..", "shared", "data"))
NAIP = os.path.join(DATA, "geotiff", "naip", "m_4709963_se_14_1_20200831.tif")
LANDSAT = os.path.join(DATA, "geotiff", "landsat", "2020.tif")
COG_F64 = os.path.join(DATA, "geotiff", "cog.tif")
SAMPLE = os.path.join(ROOT, "resources", "sample", "naip_2020_crop.tif")

for path in (ROOT, "/usr/share/qgis/python/plugins"):
    if path not in sys.path:
        sys.path.insert(0, path)
if not os.path.isdir(os.path.join(PLUGINS, "latentsr")):
    os.makedirs(PLUGINS, exist_ok=True)
    os.symlink(ROOT, os.path.join(PLUGINS, "latentsr"))
sys.path.insert(0, PLUGINS)
gdal.UseExceptions()


def write_raster(path, array, dtype=gdal.GDT_Byte, nodata=None, geotransform=(500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0),
                 epsg=32614, descriptions=None):
    """A GeoTIFF from a C×H×W array."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    # ALPHA=UNSPECIFIED: a 4th Byte band is data, not the alpha band GDAL would make of it (and honour as a mask)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[2], array.shape[1], array.shape[0], dtype,
                                              ["ALPHA=UNSPECIFIED"])
    if geotransform is not None:
        ds.SetGeoTransform(geotransform)
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for i in range(array.shape[0]):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(array[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if descriptions:
            band.SetDescription(descriptions[i])
    ds = None
    return str(path)


def request(input, output, **kw):
    """An engine.pipeline.Request with the run options among ``kw`` (the fields of RunOptions) in its options."""
    import dataclasses

    from engine.methods import RunOptions
    from engine.pipeline import Request

    run = {f.name for f in dataclasses.fields(RunOptions)}
    return Request(input, output, options=RunOptions(**{k: v for k, v in kw.items() if k in run}),
                   **{k: v for k, v in kw.items() if k not in run})


def read(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray(), ds


@pytest.fixture(scope="module")
def one_thread():
    """PyTorch on one thread for a module's in-process training runs (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): the tests' networks are too small to share across
    threads, and on two busy cores a second OpenMP thread only waits (one-batch overfitting, 40
    steps: 70 s on two threads, 3 s on one, at a load of 12)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def qgis_env():
    """Environment for a qgis_process.bin subprocess that sees the plugin and the venv."""
    env = dict(os.environ)
    site = os.path.join(ROOT, ".venv", "lib", "python3.11", "site-packages")
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=PLUGINS,
               PYTHONPATH=os.pathsep.join(p for p in (site, env.get("PYTHONPATH", "")) if p))
    subprocess.run(["/usr/bin/qgis_process.bin", "plugins", "enable", "latentsr"], env=env, capture_output=True)
    return env


@pytest.fixture(scope="session")
def provider(qgis_app, qgis_processing):
    """The LatentSR provider registered in the test's QgsApplication."""
    from qgis.core import QgsApplication

    from latentsr.provider.provider import LatentSRProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("latentsr") is None:
        registry.addProvider(LatentSRProvider())
    yield registry.providerById("latentsr")


@pytest.fixture(autouse=True, scope="session")
def collect_gdal_objects_before_qgis_exits(qgis_app):
    """exitQgis() tears down GDAL's drivers; a GDAL object collected after that crashes Python."""
    yield
    import gc

    gc.collect()
