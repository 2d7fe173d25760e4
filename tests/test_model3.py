"""The Model Builder example resources/processing_models/superresolve_and_evaluate.model3, headless."""
from __future__ import annotations

import json
import os
import subprocess

from osgeo import gdal

from tests.conftest import ROOT, SAMPLE

MODEL = os.path.join(ROOT, "resources", "processing_models", "superresolve_and_evaluate.model3")


def test_model_runs_in_qgis_process(qgis_env, tmp_path):
    sr, stats = tmp_path / "sr.tif", tmp_path / "stats.html"
    r = subprocess.run(["/usr/bin/qgis_process.bin", "--json", "run", MODEL, "--", f"input={SAMPLE}", "scale=2.5",
                        "method=3", f"superresolve:super_resolved={sr}", f"statistics:statistics={stats}"],
                       env=qgis_env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert result["results"] == {"superresolve:super_resolved": str(sr), "statistics:statistics": str(stats)}
    ds = gdal.Open(str(sr))
    assert (ds.RasterXSize, ds.RasterYSize) == (640, 640)
    ds = None
    assert "Mean" in stats.read_text(encoding="utf-8")


def test_model_loads_with_latentsr_default(provider):
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(MODEL)
    assert model.validate()[0]
    assert set(model.childAlgorithms()) == {"superresolve", "statistics"}
    assert model.childAlgorithm("superresolve").algorithmId() == "latentsr:superresolve"
    assert model.parameterDefinition("method").defaultValue() == 0
