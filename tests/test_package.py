"""The plugin zip (scripts/package.py, `make package`) installs into a fresh QGIS profile and runs there."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile

import pytest
from osgeo import gdal

from tests.conftest import ROOT, SAMPLE

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import package  # noqa: E402 - scripts/ is not a package


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("zip") / "latentsr.zip"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "package.py"), "--output", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def test_zip_contents(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        names = archive.namelist()
        sources = {n: archive.read(n).decode("utf-8") for n in names if n.endswith(".py")}
    assert all(n.startswith("latentsr/") for n in names)
    for required in ("metadata.txt", "LICENSE", "__init__.py", "plugin.py", "provider/superresolve.py", "ui/dock.py",
                     "engine/pipeline.py", "resources/icon.png", "resources/sample/naip_2020_crop.tif",
                     "resources/processing_models/superresolve_and_evaluate.model3"):
        assert f"latentsr/{required}" in names
    top = {n.split("/")[1] for n in names}
    assert top == {"metadata.txt", "LICENSE", "__init__.py", "plugin.py", "provider", "ui", "engine", "training",
                   "resources"}
    assert "latentsr/training/finetune.py" in names and not [n for n in names if n.startswith("latentsr/training/bench/")]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".aux.xml"))]
    if os.path.isdir(os.path.join(ROOT, "resources", "models")):
        assert any(n.startswith("latentsr/resources/models/") for n in names)
    for name, source in sources.items():  # super-resolution never needs the training code
        if name.startswith("latentsr/training/"):
            continue
        tree = ast.parse(source)
        # latentsr:train imports it only when it runs (inside a function), never when the plugin loads
        nodes = tree.body if name == "latentsr/provider/train.py" else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                assert "training" not in (node.module or "").split("."), name
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "training" for a in node.names), name


def test_zip_installs_and_runs_in_fresh_profile(plugin_zip, tmp_path):
    config = tmp_path / "config"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    site = os.path.join(ROOT, ".venv", "lib", "python3.11", "site-packages")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(config),
               QGIS_PLUGINPATH=str(plugins), PYTHONPATH=site)

    def qgis_process(*args):
        return subprocess.run(["/usr/bin/qgis_process.bin", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=180)

    r = qgis_process("plugins", "enable", "latentsr")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "* latentsr" in qgis_process("plugins").stdout
    out = tmp_path / "sr.tif"
    r = qgis_process("--json", "run", "latentsr:superresolve", "--", f"INPUT={SAMPLE}", "SCALE=2", "METHOD=3",
                     f"OUTPUT={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["results"]["OUTPUT"] == str(out)
    ds = gdal.Open(str(out))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (512, 512, 4)
    ds = None


def test_build_refuses_a_non_plugin_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.txt"):
        package.build(str(tmp_path / "x.zip"), root=str(tmp_path))
    assert not (tmp_path / "x.zip").exists()
