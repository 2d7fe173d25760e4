"""The bad-input matrix: every case through the CLI (one line on stderr, non-zero exit, no
traceback) and through Processing (QgsProcessingException), and never an output file left behind.
Cases whose behaviour is a documented choice (README, Limits) are checked to work instead."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from osgeo import gdal

from tests.conftest import LANDSAT, NAIP, ROOT, SAMPLE, write_raster
from training.bundle import random_bundle, write

METHOD_INDEX = {"lcmsr": 0, "e2diffsr": 1, "regression": 2, "bicubic": 3}


@dataclass
class Case:
    id: str
    src: str = "sample"           # key of the `inputs` fixture, or a literal path
    cli: list = field(default_factory=list)   # extra CLI flags
    alg: dict = field(default_factory=dict)   # extra Processing parameters
    error: str | None = None      # fragment of the message; None: the run must succeed
    alg_error: str | None = "same"  # Processing's fragment when it differs ("same": as error)
    output: str | None = None     # output key when not the default


CASES = [
    Case("missing-file", src="/nonexistent/in.tif", error="not found", alg_error="Could not load source layer"),
    Case("not-a-raster", src="text", error="cannot read", alg_error="Could not load source layer"),
    Case("zero-byte", src="empty", error="empty file", alg_error="Could not load source layer"),
    Case("truncated-geotiff", src="truncated", error="reading the input failed"),
    Case("directory", src="folder", error="folder", alg_error="Could not load source layer"),
    Case("all-nodata", src="allnodata", error="no valid pixels"),
    Case("scale-0", cli=["--scale", "0"], alg={"SCALE": 0}, error="greater than 1", alg_error="SCALE"),
    Case("scale-negative", cli=["--scale", "-2"], alg={"SCALE": -2}, error="greater than 1", alg_error="SCALE"),
    Case("scale-nan", cli=["--scale", "nan"], alg={"SCALE": float("nan")}, error="must be a number"),
    Case("scale-1", cli=["--scale", "1"], alg={"SCALE": 1}, error="greater than 1"),
    Case("scale-above-8", cli=["--scale", "8.5"], alg={"SCALE": 8.5}, error="at most 8", alg_error="SCALE"),
    Case("target-coarser", cli=["--target-resolution", "50"], alg={"TARGET_RESOLUTION": 50}, error="not finer"),
    Case("tile-le-overlap", cli=["--tile", "64", "--overlap", "64"], alg={"TILE_SIZE": 64, "OVERLAP": 64}, error="smaller than the tile"),
    Case("tile-too-small", cli=["--tile", "8", "--overlap", "2"], alg={"TILE_SIZE": 8, "OVERLAP": 2}, error="at least 16", alg_error="TILE_SIZE"),
    Case("steps-0", cli=["--method", "lcmsr", "--steps", "0"], alg={"METHOD": 0, "STEPS": -1}, error="steps", alg_error="STEPS"),
    Case("steps-too-many", cli=["--method", "lcmsr", "--steps", "9", "--model", "{good}"],
         alg={"METHOD": 0, "STEPS": 9, "MODEL": "{good}"}, error="steps must be between 1 and 4"),
    Case("unknown-method", cli=["--method", "magic"], alg={"METHOD": 7}, error="invalid choice", alg_error="METHOD"),
    Case("unknown-device", cli=["--device", "tpu"], alg={"DEVICE": 5}, error="invalid choice", alg_error="DEVICE"),
    Case("unknown-backend", cli=["--backend", "tensorrt"], alg={"BACKEND": 5}, error="invalid choice", alg_error="BACKEND"),
    Case("band-index", cli=["--bands", "9"], alg={"BANDS": [9]}, error="band 9 does not exist"),
    Case("samples-0", cli=["--samples", "0"], alg={"SAMPLES": 0}, error="samples", alg_error="SAMPLES"),
    Case("samples-deterministic", cli=["--samples", "3"], alg={"SAMPLES": 3}, error="deterministic"),
    Case("output-is-input", output="input", error="overwrite the input"),
    Case("output-folder-missing", output="nofolder", error="does not exist"),
    Case("output-folder-unwritable", output="unwritable", error="output"),
    Case("output-is-folder", output="folder", error="is a folder"),
    Case("corrupt-safetensors", cli=["--method", "regression", "--model", "{corrupt}"],
         alg={"METHOD": 2, "MODEL": "{corrupt}"}, error="cannot read the model weights"),
    Case("card-checksum", cli=["--method", "regression", "--model", "{tampered}"],
         alg={"METHOD": 2, "MODEL": "{tampered}"}, error="do not match the SHA-256"),
    Case("card-bands-mismatch", cli=["--method", "regression", "--model", "{wrongbands}"],
         alg={"METHOD": 2, "MODEL": "{wrongbands}"}, error="do not fit"),
    Case("truncated-onnx", cli=["--method", "lcmsr", "--backend", "onnx", "--model", "{truncatedonnx}"],
         alg={"METHOD": 0, "BACKEND": 2, "MODEL": "{truncatedonnx}"}, error="does not match the SHA-256"),
    Case("no-model-folder", cli=["--method", "lcmsr", "--model", "{tmp}/nomodel"],
         alg={"METHOD": 0, "MODEL": "{tmp}"}, error="no model found"),
    # behaviour chosen and documented in the README's Limits
    Case("one-pixel", src="onepixel"),
    Case("one-band", src="oneband"),
    Case("thirteen-bands", src="thirteen"),
    Case("nan-inf-pixels", src="naninf"),
    Case("no-crs", src="nocrs"),
    Case("rotated-geotransform", src="rotated"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "notes.txt").write_text("not a raster")
    (d / "empty.tif").write_bytes(b"")
    (d / "truncated.tif").write_bytes(open(NAIP, "rb").read()[:30000])
    (d / "folder").mkdir()
    rng = np.random.default_rng(0)
    one = rng.integers(1, 255, (32, 40)).astype(np.uint8)
    float_data = rng.random((32, 40)).astype(np.float32)
    float_data[3:6, 3:6] = np.nan
    float_data[10, 10] = np.inf
    paths = {
        "sample": SAMPLE, "text": str(d / "notes.txt"), "empty": str(d / "empty.tif"),
        "truncated": str(d / "truncated.tif"), "folder": str(d / "folder"),
        "allnodata": write_raster(d / "allnodata.tif", np.zeros((3, 20, 20), np.uint8), nodata=0),
        "onepixel": write_raster(d / "one.tif", np.full((3, 1, 1), 90, np.uint8)),
        "oneband": write_raster(d / "oneband.tif", one),
        "thirteen": write_raster(d / "thirteen.tif", np.stack([one] * 13)),
        "naninf": write_raster(d / "naninf.tif", float_data, dtype=gdal.GDT_Float32),
        "nocrs": write_raster(d / "nocrs.tif", np.stack([one] * 3), epsg=None),
        "rotated": write_raster(d / "rotated.tif", np.stack([one] * 3), geotransform=(0.0, 8.0, 6.0, 0.0, 6.0, -8.0)),
    }
    card, tensors = random_bundle("tiny", seed=2)
    good = write(d / "models" / "good", card, tensors)
    corrupt = write(d / "models" / "corrupt", card, tensors)
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[:8] = b"\xff" * 8  # a header length no file can have
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    meta = json.loads((corrupt / "model.json").read_text())
    import hashlib
    meta["weights"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()  # re-signed, so the parser must catch it
    (corrupt / "model.json").write_text(json.dumps(meta))
    tampered = write(d / "models" / "tampered", card, tensors)
    raw = bytearray((tampered / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(raw))
    wrong = write(d / "models" / "wrongbands", card, tensors)
    meta = json.loads((wrong / "model.json").read_text())
    for spec in meta["networks"].values():
        if "bands" in spec["config"]:
            spec["config"]["bands"] = 4
    (wrong / "model.json").write_text(json.dumps(meta))
    from training.export import export

    truncated = write(d / "models" / "truncatedonnx", card, tensors)
    export(str(truncated))
    graph = truncated / "lcmsr.onestep.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    paths.update(corrupt=str(corrupt), tampered=str(tampered), wrongbands=str(wrong), good=str(good),
                 truncatedonnx=str(truncated))
    return paths


def output_path(case: Case, tmp_path, src: str) -> str:
    return {None: str(tmp_path / "out" / "sr.tif"), "input": src, "nofolder": str(tmp_path / "nowhere" / "sr.tif"),
            "unwritable": "/proc/latentsr/sr.tif" if os.geteuid() == 0 else "/sr.tif",
            "folder": str(tmp_path / "out")}[case.output]


def fill(value, inputs, tmp_path):
    if isinstance(value, str):
        return value.format(tmp=tmp_path, **inputs)
    return value


def leftovers(tmp_path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli(case, inputs, tmp_path):
    (tmp_path / "out").mkdir()
    src = inputs.get(case.src, case.src)
    out = output_path(case, tmp_path, src)
    args = [src, out, *[fill(a, inputs, tmp_path) for a in case.cli]]
    if "--scale" not in case.cli and "--target-resolution" not in case.cli:
        args += ["--scale", "2"]
    if "--method" not in case.cli:
        args += ["--method", "bicubic"]
    r = subprocess.run([sys.executable, "-m", "engine", "superresolve", *args], cwd=ROOT, capture_output=True, text=True)
    if case.error is None:
        assert r.returncode == 0, r.stderr
        assert gdal.Open(out).RasterXSize >= 2
        return
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert case.error in lines[0]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_processing(case, inputs, tmp_path, provider):
    import processing
    from qgis.core import QgsProcessingException

    (tmp_path / "out").mkdir()
    src = inputs.get(case.src, case.src)
    params = {"INPUT": src, "OUTPUT": output_path(case, tmp_path, src), "SCALE": 2, "METHOD": 3}
    params.update({k: fill(v, inputs, tmp_path) for k, v in case.alg.items()})
    if case.error is None:
        result = processing.run("latentsr:superresolve", params)
        assert gdal.Open(result["OUTPUT"]).RasterXSize >= 2
        return
    with pytest.raises(QgsProcessingException) as err:
        processing.run("latentsr:superresolve", params)
    message = str(err.value).strip()
    assert "Traceback" not in message
    if case.alg_error == "same":  # our own message: one line
        assert case.error in message and "\n" not in message
    else:  # refused by Processing's parameter checks or layer loading, before the algorithm runs
        assert case.alg_error in message
    assert leftovers(tmp_path) == []


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_cli_full_disk(tmp_path):
    """Writes fail with EFBIG once the file-size limit is hit, as on a full disk."""
    out = tmp_path / "sr.tif"
    r = subprocess.run([sys.executable, "-m", "engine", "superresolve", NAIP, str(out), "--scale", "2", "--method", "bicubic"],
                       cwd=ROOT, capture_output=True, text=True, preexec_fn=limit_file_size)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "failed" in r.stderr or "cannot" in r.stderr
    assert os.listdir(tmp_path) == []


def test_processing_failing_write(tmp_path, provider, monkeypatch):
    import processing
    from qgis.core import QgsProcessingException

    from latentsr.engine import raster

    def fail(self, data, x0, y0):
        raise raster.LatentSRError("writing the output failed: No space left on device")

    monkeypatch.setattr(raster.OutputRaster, "write", fail)
    with pytest.raises(QgsProcessingException, match="No space left"):
        processing.run("latentsr:superresolve", {"INPUT": SAMPLE, "SCALE": 2, "METHOD": 3, "OUTPUT": str(tmp_path / "sr.tif")})
    assert os.listdir(tmp_path) == []


def slow_run(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "engine", "superresolve", LANDSAT, str(out), "--scale", "4",
                             "--method", "bicubic", "--tile", "32", "--overlap", "8", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pattern_dir, suffix, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if any(n.endswith(suffix) for n in os.listdir(pattern_dir)):
            return True
        time.sleep(0.05)
    return False


def test_cli_cancel_mid_run(tmp_path):
    p = slow_run(tmp_path / "sr.tif")
    assert wait_for(tmp_path, ".scratch.tif")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().splitlines() == ["error: interrupted"]
    assert os.listdir(tmp_path) == []


def test_processing_cancel_mid_run(tmp_path, provider):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda p: feedback.cancel() if p > 10 else None)
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run("latentsr:superresolve", {"INPUT": LANDSAT, "SCALE": 3, "METHOD": 3, "TILE_SIZE": 32, "OVERLAP": 8,
                                                 "OUTPUT": str(tmp_path / "sr.tif")}, feedback=feedback)
    assert os.listdir(tmp_path) == []


def test_two_runs_same_output(tmp_path):
    first = slow_run(tmp_path / "sr.tif")
    assert wait_for(tmp_path, ".latentsr-lock")
    second = slow_run(tmp_path / "sr.tif")
    _, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and "another run is already writing" in err2 and len(err2.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["sr.tif"]


def test_two_runs_different_outputs(tmp_path):
    runs = [slow_run(tmp_path / f"sr{k}.tif") for k in range(2)]
    for p in runs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a, b = (gdal.Open(str(tmp_path / f"sr{k}.tif")).ReadAsArray() for k in range(2))
    np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["sr0.tif", "sr1.tif"]
