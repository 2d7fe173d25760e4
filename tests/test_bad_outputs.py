"""Third hostile round (issue 23) on the outputs: all outputs of a run are put in place together or
none is, evaluate never destroys an older report or one of its own outputs, a Float64 range that
overflows gives no NaN, an unusable output folder or lock is one clear line, and a preview equals
the same area of the whole run. As tests/test_bad_inputs.py: the CLI ends with one line on stderr
and no traceback, Processing with a QgsProcessingException, and data-loss cases fingerprint every
file around the run before and after."""
from __future__ import annotations

import json
import os
import resource
import signal

import numpy as np
import pytest
from osgeo import gdal

from tests.conftest import SAMPLE, request, write_raster
from tests.test_bad_inputs import cli, fingerprint, one_line_error, processing_run
from training.bundle import random_bundle, write


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    card, tensors = random_bundle("tiny", seed=2)
    return str(write(tmp_path_factory.mktemp("model") / "tiny", card, tensors))


@pytest.fixture
def older(tmp_path):
    """A folder holding older files at a run's output (sr.tif) and uncertainty (u.tif) names."""
    d = tmp_path / "out"
    d.mkdir()
    write_raster(d / "sr.tif", np.full((4, 8, 8), 7, np.uint8))
    write_raster(d / "u.tif", np.full((4, 8, 8), 9, np.uint8))
    return d


def sample_run(d, model) -> list[str]:
    """The CLI arguments of an LCMSR run on the sample with 2 samples and an uncertainty output."""
    return ["superresolve", SAMPLE, str(d / "sr.tif"), "--scale", "2", "--method", "lcmsr", "--model", model,
            "--samples", "2", "--detail", "1", "--uncertainty", str(d / "u.tif")]


def in_process(argv, capsys) -> tuple[int, str]:
    """``python -m engine`` run in this process (so that a fault can be patched in): exit code, stderr."""
    from engine import cli as engine_cli

    code = engine_cli.main(argv)
    return code, capsys.readouterr().err


def when_packing(monkeypatch, name: str, fault) -> None:
    """gdal.Translate (how an output is packed beside its final name) runs ``fault(destination)``
    first when it packs the output called ``name``."""
    real = gdal.Translate

    def translate(dest, *args, **kwargs):
        if os.path.basename(str(dest)).startswith(f".{name}."):
            fault(str(dest))
        return real(dest, *args, **kwargs)

    monkeypatch.setattr(gdal, "Translate", translate)


def disk_full(dest):
    raise RuntimeError(f"{dest}: No space left on device")


class TestOutputsCommitTogether:
    """--samples K --uncertainty U: when the main output's last step fails, U keeps its older file."""

    def test_cli_disk_fills_while_packing_the_output(self, older, tiny_model, monkeypatch, capsys):
        before = fingerprint(older)
        when_packing(monkeypatch, "sr.tif", disk_full)
        code, err = in_process(sample_run(older, tiny_model), capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left" in err, err
        assert fingerprint(older) == before
        assert sorted(os.listdir(older)) == ["sr.tif", "u.tif"]

    def test_cli_a_folder_takes_the_output_name_mid_run(self, older, tiny_model, monkeypatch, capsys):
        os.remove(older / "sr.tif")
        before = fingerprint(older)
        when_packing(monkeypatch, "sr.tif", lambda dest: os.mkdir(older / "sr.tif"))
        code, err = in_process(sample_run(older, tiny_model), capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "is a folder" in err, err
        assert fingerprint(older) == before
        assert sorted(os.listdir(older)) == ["sr.tif", "u.tif"] and (older / "sr.tif").is_dir()

    @staticmethod
    def fail_moving_onto(monkeypatch, target):
        """os.replace fails when it moves a file onto ``target`` (after the other outputs moved)."""
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            staged = os.path.basename(str(src)).startswith(f".{target.name}.") and str(src).endswith(".part.tif")
            if staged and os.path.abspath(dst) == str(target):
                raise OSError(28, "No space left on device")
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    def test_cli_moving_the_output_into_place_fails(self, older, tiny_model, monkeypatch, capsys):
        """The uncertainty is moved first: it is put back to its older file."""
        before = fingerprint(older)
        self.fail_moving_onto(monkeypatch, older / "sr.tif")
        code, err = in_process(sample_run(older, tiny_model), capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left" in err, err
        assert fingerprint(older) == before
        assert sorted(os.listdir(older)) == ["sr.tif", "u.tif"]

    def test_processing_moving_the_output_into_place_fails(self, older, tiny_model, monkeypatch, provider):
        from qgis.core import QgsProcessingException

        before = fingerprint(older)
        self.fail_moving_onto(monkeypatch, older / "sr.tif")
        with pytest.raises(QgsProcessingException, match="No space left") as err:
            processing_run({"INPUT": SAMPLE, "SCALE": 2, "METHOD": 0, "MODEL": tiny_model, "SAMPLES": 2, "DETAIL": 1,
                            "OUTPUT": str(older / "sr.tif"), "OUTPUT_UNCERTAINTY": str(older / "u.tif")})
        assert "\n" not in str(err.value).strip() and "Traceback" not in str(err.value)
        assert fingerprint(older) == before
        assert sorted(os.listdir(older)) == ["sr.tif", "u.tif"]

    def test_both_outputs_replace_older_files(self, older, tiny_model, capsys):
        assert in_process(sample_run(older, tiny_model), capsys)[0] == 0
        assert sorted(os.listdir(older)) == ["sr.tif", "u.tif"]
        for name in ("sr.tif", "u.tif"):
            assert gdal.Open(str(older / name)).RasterXSize == 512


@pytest.fixture
def pair(tmp_path):
    """A reference and an SR raster on its grid (in/), and an empty output folder (out/)."""
    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    hr = write_raster(tmp_path / "in" / "hr.tif", rng.integers(0, 255, (3, 48, 48)).astype(np.uint8))
    sr = write_raster(tmp_path / "in" / "sr.tif", rng.integers(0, 255, (3, 48, 48)).astype(np.uint8))
    return tmp_path, hr, sr


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # a report is larger: its write fails, as on a full disk


class TestEvaluateOutputs:
    def test_cli_html_on_a_full_disk_keeps_the_older_report(self, pair):
        tmp_path, hr, sr = pair
        (tmp_path / "out" / "r.html").write_text("the older report\n")
        before = fingerprint(tmp_path)
        r = cli("evaluate", "--hr", hr, "--sr", sr, "--scale", "2", "--html", tmp_path / "out" / "r.html",
                preexec_fn=limit_file_size)
        one_line_error(r, "File too large")
        assert fingerprint(tmp_path) == before

    @pytest.mark.parametrize("flags,fragment", [
        (["--correctness", "c.tif", "--difference", "c.tif.aux.xml"],
         "difference raster {out}/c.tif.aux.xml is the .aux.xml sidecar of the correctness raster {out}/c.tif"),
        (["--difference", "d.tif", "--html", "d.tif.aux.xml"],
         "HTML report {out}/d.tif.aux.xml is the .aux.xml sidecar of the difference raster {out}/d.tif"),
        (["--correctness", "c.tif", "--html", "c.tif.ovr"], "is the .ovr sidecar of the correctness raster"),
    ], ids=["difference-is-correctness-sidecar", "html-is-difference-sidecar", "html-is-correctness-ovr"])
    def test_cli_an_output_is_another_outputs_sidecar(self, pair, flags, fragment):
        tmp_path, hr, sr = pair
        out = tmp_path / "out"
        (out / "c.tif.aux.xml").write_text("<PAMDataset/>")  # a file the user keeps there
        before = fingerprint(tmp_path)
        flags = [str(out / f) if not f.startswith("--") else f for f in flags]
        r = cli("evaluate", "--hr", hr, "--sr", sr, "--scale", "2", *flags)
        one_line_error(r, fragment.format(out=out))
        assert fingerprint(tmp_path) == before

    def test_processing_an_output_is_another_outputs_sidecar(self, pair, provider):
        from qgis.core import QgsProcessingException

        tmp_path, hr, sr = pair
        out = tmp_path / "out"
        with pytest.raises(QgsProcessingException, match="sidecar of the correctness raster") as err:
            processing_run({"INPUT": sr, "REFERENCE": hr, "SCALE": 2, "OUTPUT_HTML": str(out / "c.tif.aux.xml"),
                            "OUTPUT_CORRECTNESS": str(out / "c.tif")}, "latentsr:evaluate")
        assert "\n" not in str(err.value).strip()
        assert os.listdir(out) == []

    @pytest.mark.parametrize("flag", ["--difference", "--correctness"])
    def test_cli_geotiff_outputs_must_be_named_tif(self, pair, flag):
        tmp_path, hr, sr = pair
        r = cli("evaluate", "--hr", hr, "--sr", sr, "--scale", "2", flag, tmp_path / "out" / "x.png")
        one_line_error(r, "must end in .tif or .tiff, not .png")
        assert os.listdir(tmp_path / "out") == []

    def test_processing_difference_must_be_named_tif(self, pair, provider):
        from qgis.core import QgsProcessingException

        tmp_path, hr, sr = pair
        with pytest.raises(QgsProcessingException, match=r"must end in \.tif or \.tiff, not \.png"):
            processing_run({"INPUT": sr, "REFERENCE": hr, "SCALE": 2, "OUTPUT_HTML": str(tmp_path / "out" / "r.html"),
                            "OUTPUT_DIFFERENCE": str(tmp_path / "out" / "x.png")}, "latentsr:evaluate")
        assert os.listdir(tmp_path / "out") == []

    def test_a_failing_output_leaves_the_others_older_files(self, pair, monkeypatch):
        """The correctness raster fails as it is packed: the difference raster and the report keep
        their older files."""
        from engine.evaluate import EvaluateRequest, evaluate
        from engine.errors import LatentSRError

        tmp_path, hr, sr = pair
        out = tmp_path / "out"
        write_raster(out / "d.tif", np.ones((3, 4, 4), np.uint8))
        (out / "r.html").write_text("the older report\n")
        before = fingerprint(tmp_path)
        when_packing(monkeypatch, "c.tif", disk_full)
        with pytest.raises(LatentSRError, match="No space left"):
            evaluate(EvaluateRequest(reference=hr, sr=sr, scale=2, html=str(out / "r.html"),
                                     difference=str(out / "d.tif"), correctness=str(out / "c.tif")))
        assert fingerprint(tmp_path) == before
        assert sorted(os.listdir(out)) == ["d.tif", "r.html"]


def huge_float64(path, shrink: int = 0) -> str:
    """A Float64 raster whose values spread over ±1.2e308 (× 2^-``shrink``): their range overflows."""
    values = np.random.default_rng(7).uniform(-1.2, 1.2, (3, 40, 40)) * 1e308
    return write_raster(path, np.ldexp(values, -shrink), dtype=gdal.GDT_Float64)


class TestFloat64Overflow:
    def test_cli_superresolve_gives_no_nan(self, tmp_path, provider):
        src, small = huge_float64(tmp_path / "huge.tif"), huge_float64(tmp_path / "small.tif", shrink=1000)
        for name, path in (("huge", src), ("small", small)):
            r = cli("superresolve", path, tmp_path / f"{name}-sr.tif", "--scale", "2", "--method", "bicubic")
            assert r.returncode == 0 and r.stderr == "", r.stderr  # no numpy warning either
        processing_run({"INPUT": src, "SCALE": 2, "METHOD": 3, "OUTPUT": str(tmp_path / "alg.tif")})
        huge = gdal.Open(str(tmp_path / "huge-sr.tif")).ReadAsArray()
        small = np.ldexp(gdal.Open(str(tmp_path / "small-sr.tif")).ReadAsArray(), 1000)
        assert np.isfinite(huge).all()
        np.testing.assert_array_equal(gdal.Open(str(tmp_path / "alg.tif")).ReadAsArray(), huge)
        # the same pixels as the same raster scaled into an ordinary range (up to float32 rounding in the method)
        np.testing.assert_allclose(huge / 1e308, small / 1e308, rtol=0, atol=1e-5)

    def test_cli_evaluate_scores_it_and_says_how(self, tmp_path):
        runs = {}
        for name, shrink in (("huge", 0), ("small", 1000)):
            hr = huge_float64(tmp_path / f"{name}.tif", shrink)
            r = cli("evaluate", "--hr", hr, "--scale", "2", "--method", "bicubic", "--json")
            assert r.returncode == 0 and r.stderr == "", r.stderr
            runs[name] = json.loads(r.stdout)
        overall = runs["huge"]["results"][0]["overall"]
        assert all(v is not None for v in overall.values()), overall  # every metric available
        assert any("overflow" in n for n in runs["huge"]["notes"]), runs["huge"]["notes"]
        for key, value in overall.items():  # the metrics are scale-free: those of the same raster scaled down
            assert value == pytest.approx(runs["small"]["results"][0]["overall"][key], rel=1e-4, abs=1e-6), key


class TestUnusableOutputPlaces:
    def test_cli_lock_path_is_a_folder(self, tmp_path):
        (tmp_path / ".sr.tif.latentsr-lock").mkdir()
        line = one_line_error(cli("superresolve", SAMPLE, tmp_path / "sr.tif", "--scale", "2", "--method", "bicubic"),
                              "lock file")
        assert str(tmp_path / ".sr.tif.latentsr-lock") in line
        assert os.listdir(tmp_path) == [".sr.tif.latentsr-lock"]

    def test_processing_lock_path_is_a_folder(self, tmp_path, provider):
        from qgis.core import QgsProcessingException

        (tmp_path / ".sr.tif.latentsr-lock").mkdir()
        with pytest.raises(QgsProcessingException, match="lock file") as err:
            processing_run({"INPUT": SAMPLE, "SCALE": 2, "METHOD": 3, "OUTPUT": str(tmp_path / "sr.tif")})
        assert "\n" not in str(err.value).strip()
        assert os.listdir(tmp_path) == [".sr.tif.latentsr-lock"]

    @pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="no /sys here")
    def test_cli_output_on_a_pseudo_file_system(self):
        line = one_line_error(cli("superresolve", SAMPLE, "/sys/kernel/latentsr-sr.tif", "--scale", "2", "--method",
                                  "bicubic"), "/sys/kernel")
        assert "GiB" not in line and ("cannot be written" in line or "not writable" in line), line


PREVIEW = (60, 70, 180, 190)  # input pixel columns 60..179, rows 70..189 of the 256² sample


def preview_and_whole(tmp_path, method, **kw):
    """The preview of PREVIEW and the same area of the whole run, both ×2."""
    from engine.pipeline import superresolve

    gt = gdal.Open(SAMPLE).GetGeoTransform()
    x0, y0, x1, y1 = PREVIEW
    extent = (gt[0] + x0 * gt[1], gt[3] + y1 * gt[5], gt[0] + x1 * gt[1], gt[3] + y0 * gt[5])
    superresolve(request(SAMPLE, str(tmp_path / "whole.tif"), scale=2, method=method, **kw))
    superresolve(request(SAMPLE, str(tmp_path / "part.tif"), scale=2, method=method, extent=extent, **kw))
    whole, part = (gdal.Open(str(tmp_path / n)) for n in ("whole.tif", "part.tif"))
    col = round((part.GetGeoTransform()[0] - gt[0]) / whole.GetGeoTransform()[1])
    row = round((part.GetGeoTransform()[3] - gt[3]) / whole.GetGeoTransform()[5])
    assert (col, row) == (2 * x0, 2 * y0)
    p = part.ReadAsArray().astype(np.int32)
    return p, whole.ReadAsArray().astype(np.int32)[:, row:row + p.shape[1], col:col + p.shape[2]]


class TestPreviewSeam:
    def test_bicubic_preview_equals_the_whole_run(self, tmp_path):
        part, whole = preview_and_whole(tmp_path, "bicubic")
        np.testing.assert_array_equal(part, whole)  # edges included

    def test_regression_preview_equals_the_whole_run(self, tmp_path):
        part, whole = preview_and_whole(tmp_path, "regression", tile=96, overlap=40)
        assert np.abs(part - whole).max() <= 1  # within float rounding of a tiled run, at the edges too

    def test_sampled_lcmsr_preview_equals_the_whole_run(self, tmp_path, tiny_model):
        """Its noise is drawn per latent cell of the whole raster's output grid, in a preview too."""
        part, whole = preview_and_whole(tmp_path, "lcmsr", model=tiny_model, detail=1.0, seed=3)
        assert np.abs(part - whole).max() <= 1

    def test_processing_preview(self, tmp_path, provider):
        """As the dock's "Visible map extent only": an EXTENT in the layer's CRS."""
        gt = gdal.Open(SAMPLE).GetGeoTransform()
        x0, y0, x1, y1 = PREVIEW
        extent = f"{gt[0] + x0 * gt[1]},{gt[0] + x1 * gt[1]},{gt[3] + y1 * gt[5]},{gt[3] + y0 * gt[5]} [EPSG:26914]"
        for name, params in (("whole", {}), ("part", {"EXTENT": extent})):
            processing_run({"INPUT": SAMPLE, "SCALE": 2, "METHOD": 3, "OUTPUT": str(tmp_path / f"{name}.tif"),
                            **params})
        part = gdal.Open(str(tmp_path / "part.tif")).ReadAsArray()
        whole = gdal.Open(str(tmp_path / "whole.tif")).ReadAsArray()
        np.testing.assert_array_equal(part, whole[:, 2 * y0:2 * y0 + part.shape[1], 2 * x0:2 * x0 + part.shape[2]])
