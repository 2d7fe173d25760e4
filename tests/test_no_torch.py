"""The engine with torch made unimportable: the CLI and Processing run LCMSR on ONNX Runtime alone."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from osgeo import gdal

from engine.methods import RunOptions
from engine.pipeline import Request, superresolve
from tests.conftest import PLUGINS, ROOT, SAMPLE
from tests.test_onnx import exported_bundle

# Runs before anything else in the child: `import torch` (and any torch submodule) raises ImportError.
BLOCK_TORCH = "import sys; sys.modules['torch'] = None"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_bundle(tmp_path_factory.mktemp("no_torch") / "tiny")[2]


@pytest.fixture(scope="module")
def torch_output(model, tmp_path_factory):
    """The reference: the same run on the torch backend, in this process."""
    out = tmp_path_factory.mktemp("torch") / "sr.tif"
    superresolve(Request(input=SAMPLE, output=str(out), scale=2.0,
                         options=RunOptions(method="lcmsr", backend="torch", model=model, seed=3)))
    return gdal.Open(str(out)).ReadAsArray()


def run_child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"{BLOCK_TORCH}\n{textwrap.dedent(code)}"], cwd=ROOT,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=120)


def check_output(path, torch_output):
    src, ds = gdal.Open(SAMPLE), gdal.Open(str(path))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (512, 512, 4)
    gt, src_gt = ds.GetGeoTransform(), src.GetGeoTransform()
    assert gt[0] == src_gt[0] and gt[3] == src_gt[3] and gt[1] == pytest.approx(src_gt[1] / 2)
    assert ds.GetProjection() == src.GetProjection()
    out = ds.ReadAsArray()
    assert out.dtype == np.uint8 and out.std() > 1
    assert np.abs(out.astype(int) - torch_output.astype(int)).max() <= 1  # 1e-3 normalised, then rounded to bytes


def test_guard_blocks_torch():
    r = run_child("""
        try:
            import torch
        except ImportError:
            raise SystemExit(0)
        raise SystemExit(1)
    """)
    assert r.returncode == 0, r.stderr


def test_cli_without_torch(model, torch_output, tmp_path):
    out = tmp_path / "sr.tif"
    r = run_child(f"""
        import logging
        from engine.cli import main
        code = main(["-v", "superresolve", {SAMPLE!r}, {str(out)!r}, "--scale", "2", "--method", "lcmsr",
                     "--backend", "auto", "--seed", "3", "--model", {model!r}])
        assert not any(m == "torch" or m.startswith("torch.") for m, v in sys.modules.items() if v is not None)
        raise SystemExit(code)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backend onnx on CPUExecutionProvider" in r.stderr
    check_output(out, torch_output)


def test_processing_without_torch(model, torch_output, tmp_path):
    out, report = tmp_path / "sr.tif", tmp_path / "report.json"
    r = run_child(f"""
        import json
        from qgis.core import QgsApplication, QgsProcessingFeedback
        app = QgsApplication([], False)
        app.initQgis()
        sys.path[:0] = ["/usr/share/qgis/python/plugins", {PLUGINS!r}]
        from processing.core.Processing import Processing
        Processing.initialize()
        from latentsr.provider.provider import LatentSRProvider
        provider = LatentSRProvider()  # kept referenced: the registry does not keep the Python object alive
        QgsApplication.processingRegistry().addProvider(provider)
        import processing

        class Feedback(QgsProcessingFeedback):
            lines = []

            def pushInfo(self, info):
                self.lines.append(info)

        result = processing.run("latentsr:superresolve", {{"INPUT": {SAMPLE!r}, "SCALE": 2.0, "METHOD": 0,
                                "BACKEND": 0, "SEED": 3, "OUTPUT": {str(out)!r}}}, feedback=Feedback())
        with open({str(report)!r}, "w") as f:
            torch = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "torch"]
            json.dump({{"output": result["OUTPUT"], "log": Feedback.lines, "torch": torch}}, f)
        Processing.deinitialize()
        app.exitQgis()
    """, env={"QT_QPA_PLATFORM": "offscreen", "LATENTSR_MODEL": model})
    assert report.exists(), r.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["output"] == str(out) and result["torch"] == []
    assert any("backend onnx on CPUExecutionProvider" in line for line in result["log"]), result["log"]
    check_output(out, torch_output)
