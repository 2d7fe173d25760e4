"""latentsr:superresolve through Processing, in process and headless with qgis_process.bin."""
import json
import os
import subprocess

import numpy as np
import pytest
from osgeo import gdal

from engine.methods import RunOptions
from engine.pipeline import Request, superresolve
from engine.output import output_geotransform

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
    superresolve(Request(input=LANDSAT, output=direct, scale=2.5, bands=[3, 2], tile=128, overlap=16,
                         options=RunOptions(method="bicubic")))
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


def test_qgis_process_runs_local_dask_workers_with_the_same_pixels(qgis_env, tmp_path):
    """CLUSTER=local:2 inside qgis_process (whose sys.executable is not a Python: the workers start
    with the interpreter engine.interpreter finds) writes the bytes of a single run."""
    single, local = tmp_path / "single.tif", tmp_path / "local.tif"
    for out, extra in ((single, []), (local, ["CLUSTER=local:2"])):
        qgis_process_superresolve(qgis_env, f"INPUT={SAMPLE}", "SCALE=2", "METHOD=2", *extra, f"OUTPUT={out}")
    assert single.read_bytes() == local.read_bytes()


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


def test_steps_maximum_is_the_engines(provider):
    import engine.registry
    from engine.registry import REGISTRY

    most = max(info.max_steps for info in REGISTRY.values())  # 4: both diffusion methods refuse more
    for name in ("superresolve", "evaluate"):
        steps = provider.algorithm(name).parameterDefinition("STEPS")
        assert (steps.minimum(), steps.maximum()) == (0, most), name
    assert engine.registry.MAX_STEPS == most


def test_no_cuda_offered_without_a_gpu(provider):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for name, devices in (("superresolve", ["auto", "cpu"]), ("evaluate", ["auto", "cpu"]), ("train", ["cpu"])):
        assert provider.algorithm(name).parameterDefinition("DEVICE").options() == devices, name


def test_cluster_address_without_port_is_one_line_without_traceback(provider, tmp_path, caplog):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    out = tmp_path / "sr.tif"
    with pytest.raises(QgsProcessingException) as caught:
        processing.run("latentsr:superresolve", {"INPUT": SAMPLE, "SCALE": 2, "METHOD": 3, "CLUSTER": "foo",
                                                 "OUTPUT": str(out)})
    message = str(caught.value)
    assert "CLUSTER" in message and "port" in message and "\n" not in message
    assert not any(record.exc_info for record in caplog.records)  # no traceback in any log
    assert os.listdir(tmp_path) == []
    from latentsr.provider.superresolve import check_cluster

    class Feedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushInfo(self, info):  # noqa: N802 - QGIS API
            self.lines.append(info)

    feedback = Feedback()
    check_cluster("tcp://127.0.0.1:1", feedback)  # an unreachable scheduler: the run says that it waits
    assert feedback.lines == ["Connecting to the Dask scheduler at tcp://127.0.0.1:1 (waiting up to 30 s)…"]
    label = provider.algorithm("superresolve").parameterDefinition("CLUSTER").description()
    assert "Dask" in label and "this process" not in label


def test_help_has_no_literal_backticks(provider):
    for alg in provider.algorithms():
        assert "`" not in alg.shortHelpString(), alg.id()


def test_default_train_output_is_a_persistent_folder_in_the_profile(provider):
    from qgis.core import QgsApplication, QgsProcessing, QgsProcessingUtils

    profile, temporary = QgsApplication.qgisSettingsDirPath(), QgsProcessingUtils.tempFolder()
    default = provider.algorithm("train").parameterDefinition("OUTPUT_MODEL").defaultValue()
    assert default and default.startswith(profile) and not default.startswith(temporary)
    from latentsr.provider.train import models_folder, output_folder

    # a temporary folder (gone after a restart) or the default give a folder named after the inputs
    for value, resolved in ((QgsProcessing.TEMPORARY_OUTPUT, os.path.join(temporary, "OUTPUT_MODEL")),
                            (default, default)):
        folder = output_folder(value, resolved, ["naip 2020", "landsat"])
        assert folder == os.path.join(models_folder(), "naip_2020+landsat")
        assert folder.startswith(profile) and not folder.startswith(temporary)
    assert output_folder("/data/mine", "/data/mine", ["naip"]) == "/data/mine"


def test_train_errors_name_the_dialogs_parameters(provider, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    out = str(tmp_path / "model")
    with pytest.raises(QgsProcessingException, match=r"SCALE_MIN.*SCALE_MAX"):
        processing.run("latentsr:train", {"INPUT": [SAMPLE], "SCALE_MIN": 4, "SCALE_MAX": 2, "OUTPUT_MODEL": out})
    with pytest.raises(QgsProcessingException) as caught:
        processing.run("latentsr:train", {"INPUT": [SAMPLE], "STEPS": 1, "CROP": 100, "OUTPUT_MODEL": out})
    assert "Window size (CROP) must be a multiple of 32 from 32 to 1024, got 100" in str(caught.value) and "--" not in str(caught.value)


def test_train_log_names_what_validation_compares(provider):
    import logging

    from qgis.core import QgsProcessingFeedback

    from latentsr.provider.train import TrainingLog

    feedback = QgsProcessingFeedback()
    lines = []
    feedback.pushInfo = lines.append
    handler = TrainingLog(feedback)
    handler.emit(logging.LogRecord("training.trainer", logging.INFO, "", 0, "step %d: validation PSNR %.2f dB%s",
                                   (10, 30.0, "; reference 34.40 dB, the model -1.43 above it"), None))
    handler.emit(logging.LogRecord("training.finetune", logging.INFO, "", 0, "fine-tune %d/%d", (1, 3), None))
    assert lines == ["fine-tune 1/3"]
