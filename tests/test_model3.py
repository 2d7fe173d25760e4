"""The Model Builder example resources/processing_models/superresolve_and_evaluate.model3, headless."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
from osgeo import gdal

from engine.resample import downsample
from tests.conftest import ROOT, SAMPLE, read, write_raster

MODEL = os.path.join(ROOT, "resources", "processing_models", "superresolve_and_evaluate.model3")


def test_model_runs_in_qgis_process(qgis_env, tmp_path):
    hr, ds = read(SAMPLE)
    gt = ds.GetGeoTransform()
    ds = None
    lr = write_raster(tmp_path / "lr.tif", np.rint(downsample(hr.astype(np.float32), 128, 128)).clip(0, 255),
                      geotransform=(gt[0], gt[1] * 2, 0.0, gt[3], 0.0, gt[5] * 2), epsg=26914)
    sr, report, diff = tmp_path / "sr.tif", tmp_path / "report.html", tmp_path / "diff.tif"
    r = subprocess.run(["/usr/bin/qgis_process.bin", "--json", "run", MODEL, "--", f"input={lr}", f"reference={SAMPLE}",
                        "scale=2", "method=3", f"superresolve:super_resolved={sr}", f"evaluate:report={report}",
                        f"evaluate:difference={diff}"],
                       env=qgis_env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert result["results"] == {"superresolve:super_resolved": str(sr), "evaluate:report": str(report),
                                 "evaluate:difference": str(diff)}
    out = gdal.Open(str(sr))
    assert (out.RasterXSize, out.RasterYSize) == (256, 256)
    out = None
    text = report.read_text(encoding="utf-8")
    assert "<table" in text and "Consistency PSNR" in text and "against the LR raster" in text
    assert gdal.Open(str(diff)).GetRasterBand(1).DataType == gdal.GDT_Float32


def test_model_loads_with_latentsr_default(provider):
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(MODEL)
    assert model.validate()[0]
    assert set(model.childAlgorithms()) == {"superresolve", "evaluate"}
    assert model.childAlgorithm("superresolve").algorithmId() == "latentsr:superresolve"
    assert model.childAlgorithm("evaluate").algorithmId() == "latentsr:evaluate"
    assert model.dependentChildAlgorithms("superresolve") == {"evaluate"}
    assert model.parameterDefinition("method").defaultValue() == 0
