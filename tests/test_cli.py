"""`python -m engine`: exit codes and one-line messages."""
import os
import subprocess
import sys

import pytest
from osgeo import gdal

from tests.conftest import ROOT, SAMPLE


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_success_prints_the_output(tmp_path):
    out = tmp_path / "sr.tif"
    r = cli("superresolve", SAMPLE, out, "--scale", "2.5", "--method", "bicubic", "--bands", "1,2,3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    ds = gdal.Open(str(out))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (640, 640, 3)


@pytest.mark.parametrize("args,fragment", [
    (["missing.tif", "{out}", "--scale", "2"], "not found"),
    (["{notraster}", "{out}", "--scale", "2"], "cannot read"),
    (["{empty}", "{out}", "--scale", "2"], "empty file"),
    ([SAMPLE, "{out}", "--scale", "0"], "greater than 1"),
    ([SAMPLE, "{out}", "--scale", "-2"], "greater than 1"),
    ([SAMPLE, "{out}", "--scale", "1"], "greater than 1"),
    ([SAMPLE, "{out}", "--scale", "9"], "at most 8"),
    ([SAMPLE, "{out}", "--scale", "nan"], "must be a number"),
    ([SAMPLE, "{out}"], "--scale or --target-resolution"),
    ([SAMPLE, "{out}", "--scale", "2", "--tile", "64", "--overlap", "64"], "smaller than the tile"),
    ([SAMPLE, SAMPLE, "--scale", "2"], "overwrite the input"),
    ([SAMPLE, "/nonexistent-folder/sr.tif", "--scale", "2"], "does not exist"),
    ([SAMPLE, "/proc/sr.tif", "--scale", "2"], "output"),
    ([SAMPLE, "{out}", "--scale", "2", "--method", "magic"], "invalid choice"),
    ([SAMPLE, "{out}", "--scale", "2", "--bands", "7"], "band 7 does not exist"),
    ([SAMPLE, "{out}", "--scale", "2", "--bands", "x"], "comma-separated"),
    ([SAMPLE, "{out}", "--scale", "2", "--device", "tpu"], "invalid choice"),
])
def test_bad_input_one_line_and_nonzero(tmp_path, args, fragment):
    (tmp_path / "notes.txt").write_text("not a raster")
    (tmp_path / "empty.tif").write_bytes(b"")
    names = dict(out=tmp_path / "sr.tif", notraster=tmp_path / "notes.txt", empty=tmp_path / "empty.tif")
    args = [str(a).format(**names) for a in args]
    if "--method" not in args:
        args += ["--method", "bicubic"]
    r = cli("superresolve", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert fragment in lines[0]
    assert not (tmp_path / "sr.tif").exists()
    assert sorted(os.listdir(tmp_path)) == ["empty.tif", "notes.txt"]


@pytest.mark.parametrize("text,reason", [("x", "comma-separated"), ("1,,b", "comma-separated"), ("1 2,3", "comma-separated"),
                                         ("0,1", "numbered from 1"), ("2,-1", "numbered from 1")])
def test_one_band_list_parser_for_both_clis_and_the_train_algorithm(qgis_app, text, reason, capsys):
    """engine.raster.parse_bands is the one parser: the engine's --bands, training's --raster-bands and
    --bands, and the train algorithm's BANDS give the same reason for the same bad list, and read a
    good one alike ("1, 3,2" is [1, 3, 2]; the algorithm reads an empty BANDS as all bands)."""
    from qgis.core import QgsProcessingException

    from engine import cli as engine_cli, raster
    from latentsr.provider.train import parse_bands
    from training.cli import main as train_main

    with pytest.raises(ValueError, match=reason):
        raster.parse_bands(text)
    with pytest.raises(QgsProcessingException, match=f"BANDS: .*{reason}"):
        parse_bands(text)
    r = cli("superresolve", SAMPLE, "/nonexistent/sr.tif", "--scale", "2", "--bands", text)
    assert r.returncode == 2 and reason in r.stderr
    assert train_main(["finetune", "--rasters", SAMPLE, "--out", "/nonexistent/m", "--bands", text]) == 2
    assert reason in capsys.readouterr().err
    assert raster.parse_bands("1, 3,2") == parse_bands("1, 3,2") == engine_cli.band_list("1, 3,2") == [1, 3, 2]
    assert raster.parse_bands(" ") is None and parse_bands("") is None
