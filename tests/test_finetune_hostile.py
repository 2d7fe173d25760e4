"""Hostile fine-tunes (python -m training finetune, latentsr:train): a fine-tune writes only into a new
or empty folder or its own run, never into the bundled models or a raster folder; a re-run with other
defining options is refused; bad options, damaged training state and bad start cards are one line;
SIGTERM checkpoints like Ctrl-C; validation reads a huge raster's validity map with bounded memory."""
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from engine.modelfile import DEFAULT_MODEL, MODELS_DIR
from training import finetune
from training.bundle import random_bundle, write
from training.cli import main as train_main
from training.errors import TrainingError

from tests.conftest import NAIP, ROOT, write_raster
from tests.test_finetune import finetune_args, tiny_init, uint16_raster  # noqa: F401 - fixtures
from tests.test_training import texture

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks fine-tuned in-process (conftest.one_thread)
MARKER = "finetune-run.json"  # training.finetune.MARKER: the run marker a fine-tune writes first into its folder


def fingerprint(folder) -> dict:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys, fragment: str = "") -> str:
    """The run's error: the last line on stderr and its only ``error:`` line (the lines before it are
    the log's progress lines), with no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert sum(line.startswith("error") for line in lines) == 1, err
    assert fragment in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def finished(uint16_raster, tiny_init, tmp_path_factory):  # noqa: F811 - fixtures
    """A finished fine-tune run (2 steps) of the tiny model on the 4-band raster."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train_main(finetune_args(uint16_raster, out, tiny_init)) == 0
    return out


# 1. what a fine-tune may write

def test_refuses_a_folder_of_someone_elses_files(uint16_raster, tiny_init, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "model.json").write_text('{"their": "card"}')
    (out / "decoder.onnx").write_bytes(b"their graph")
    (out / "notes.txt").write_text("my thesis notes")
    before = fingerprint(tmp_path)
    assert train_main(finetune_args(uint16_raster, out, tiny_init)) == 2
    assert "is not a fine-tune run" in one_line(capsys, str(out))
    assert fingerprint(tmp_path) == before


def test_never_writes_into_the_bundled_models(uint16_raster, tiny_init, capsys):  # noqa: F811
    before = fingerprint(MODELS_DIR)
    for out in (MODELS_DIR / DEFAULT_MODEL, MODELS_DIR / "my-finetune", MODELS_DIR):
        assert train_main(finetune_args(uint16_raster, out, tiny_init)) == 2
        one_line(capsys, "bundled models")
    assert fingerprint(MODELS_DIR) == before and not (MODELS_DIR / "my-finetune").exists()


def test_processing_refuses_a_folder_of_someone_elses_files(provider, uint16_raster, tiny_init, tmp_path):  # noqa: F811
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "theirs"
    out.mkdir()
    (out / "model.json").write_text('{"their": "card"}')
    (out / "notes.txt").write_text("my notes")
    before = fingerprint(tmp_path)
    params = {"INPUT": [uint16_raster], "INIT_MODEL": tiny_init, "STEPS": 2, "STAGE2_STEPS": 2, "BATCH": 2,
              "CROP": 32, "OUTPUT_MODEL": str(out)}
    with pytest.raises(QgsProcessingException, match="is not a fine-tune run"):
        processing.run("latentsr:train", params)
    with pytest.raises(QgsProcessingException, match="bundled models"):
        processing.run("latentsr:train", dict(params, OUTPUT_MODEL=str(MODELS_DIR / DEFAULT_MODEL)))
    assert fingerprint(tmp_path) == before


def test_an_output_folder_that_cannot_be_made_is_one_line(uint16_raster, tiny_init, capsys):  # noqa: F811
    assert train_main(finetune_args(uint16_raster, "/proc/latentsr-out/model", tiny_init)) == 2
    one_line(capsys, "cannot write the output folder /proc/latentsr-out/model")


# 2. a run is its options

def test_a_rerun_with_other_defining_options_is_refused(uint16_raster, tiny_init, tmp_path, capsys, monkeypatch):  # noqa: F811
    """The refusals come before any training, so the first run stops right after writing its marker
    (the fine-tune's own code writes it: its first stage cannot start); only the accepted re-run trains
    (that a finished run resumes from its checkpoints: test_finetune.py)."""
    def no_training(*args, **kwargs):
        raise TrainingError("no training in this test")

    out = tmp_path / "run"
    monkeypatch.setattr(finetune, "Trainer", no_training)
    assert train_main(finetune_args(uint16_raster, out, tiny_init, 2, "--bands", "1,2,3")) == 2
    one_line(capsys, "no training in this test")
    monkeypatch.undo()
    assert os.listdir(out) == [MARKER]
    marker = json.loads((out / MARKER).read_text())
    assert marker["options"]["bands"] == [1, 2, 3] and marker["options"]["init"] == str(Path(tiny_init).resolve())
    before = fingerprint(out)
    for other in (["--bands", "1,2,3,4"], ["--bands", "4,3,2"], ["--bands", "1,2,3", "--scales", "2", "4"],
                  ["--bands", "1,2,3", "--seed", "5"]):
        assert train_main(finetune_args(uint16_raster, out, tiny_init, 2, *other)) == 2
        assert "choose a new --out" in one_line(capsys, str(out))
    assert fingerprint(out) == before
    # what may change on resume: the steps; the run goes on with its bands
    assert train_main(finetune_args(uint16_raster, out, tiny_init, 3, "--bands", "1,2,3")) == 0
    state = json.loads((out / "training" / "stage1" / "checkpoint.json").read_text())
    assert [s for s, _ in state["history"]["loss"]] == [1, 2, 3]
    assert json.loads((out / "model.json").read_text())["bands"] == 3


def test_out_inside_a_raster_folder_is_refused(tiny_init, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "imagery"
    folder.mkdir()
    write_raster(folder / "a.tif", np.moveaxis(texture(96, 96, 2, bands=3), -1, 0).clip(1, 255))
    before = fingerprint(tmp_path)
    for out, extra in ((folder / "model", []), (folder, []), (tmp_path / "sub" / "m", ["--val", str(tmp_path)])):
        assert train_main(finetune_args(str(folder), out, tiny_init, 2, *extra)) == 2
        one_line(capsys, "inside the raster folder")
    assert fingerprint(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["imagery"]


# 3. options

@pytest.mark.parametrize("flag,value,fragment", [
    ("--crop", "0", "--crop"), ("--crop", "-32", "--crop"),
    ("--batch", "0", "--batch"), ("--batch", "-2", "--batch"),
    ("--val-crop", "0", "--val-crop"),
    ("--val-images", "0", "--val-images"), ("--val-images", "-3", "--val-images"),
    ("--lr", "nan", "--lr"), ("--lr", "-1", "--lr"), ("--lr", "inf", "--lr"),
    ("--workers", "-1", "--workers"), ("--seed", "-1", "--seed"), ("--seed", str(2**64), "--seed"),
    ("--steps", "0", "--steps"), ("--stage2-steps", "0", "--stage2-steps"), ("--crop", "abc", "invalid int"),
])
def test_bad_option_is_one_line(uint16_raster, tiny_init, tmp_path, capsys, flag, value, fragment):  # noqa: F811
    argv = finetune_args(uint16_raster, tmp_path / "m", tiny_init)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert train_main(argv) == 2
    one_line(capsys, fragment)
    assert os.listdir(tmp_path) == []


def test_fuzz_finetune_options(uint16_raster, tmp_path_factory, capsys):  # noqa: F811
    """Any fine-tune argument list built from its numeric and band options (NaN, ±inf, huge and negative
    integers, empty strings, unicode) ends with exit code 2 and one line, never a traceback, and writes
    nothing. The start model has no stage-2 method, so a valid list stops after the options, the data
    and the output folder are checked ("no diffusion method") and never trains."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    folder = tmp_path_factory.mktemp("fuzz")
    card, tensors = random_bundle("tiny", bands=4, name="stage1-only")
    init = str(write(folder / "stage1-only", card.updated(methods={}), tensors))
    numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.integers(-2**70, 2**70).map(str), st.integers(-40, 300).map(str),
                        st.sampled_from(["", ",", "1,", "٣", "2.5", "1e309", "-0", "32", "64", "96"]))
    texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), max_size=8)
    value = st.one_of(numbers, texts, st.lists(numbers, min_size=0, max_size=5).map(",".join))
    flag = st.sampled_from(["--crop", "--batch", "--val-crop", "--val-images", "--lr", "--workers", "--seed", "--steps",
                            "--stage2-steps", "--bands", "--scales", "--device", "--name"])
    before = fingerprint(folder)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(pairs=st.lists(st.tuples(flag, value, numbers), max_size=4), name=texts)
    def run(pairs, name):
        argv = ["finetune", "--rasters", uint16_raster, "--out", str(folder / ("out" + name)), "--init", init,
                "--no-progress"]
        for f, v, w in pairs:
            argv += [f, v, w] if f == "--scales" else [f"{f}={v}"]
        code = train_main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("error: "), (argv, err)
        assert fingerprint(folder) == before, argv

    run()


# 4. damaged training state

@pytest.mark.parametrize("damage,named", [
    ("zeros", "checkpoint.safetensors"), ("truncated", "checkpoint.json"), ("marker", MARKER),
])
def test_damaged_state_is_one_line(finished, uint16_raster, tiny_init, tmp_path, capsys, damage, named):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    stage1 = out / "training" / "stage1"
    if damage == "zeros":
        (stage1 / "checkpoint.safetensors").write_bytes(bytes(100))
    elif damage == "truncated":
        text = (stage1 / "checkpoint.json").read_text()
        (stage1 / "checkpoint.json").write_text(text[:len(text) // 2])
    else:
        (out / MARKER).write_text((out / MARKER).read_text()[:20])
    before = fingerprint(out)
    assert train_main(finetune_args(uint16_raster, out, tiny_init)) == 2
    line = one_line(capsys, named)
    assert "damaged" in line and "delete the folder" in line
    assert fingerprint(out) == before


# 5. start cards

@pytest.mark.parametrize("change", ["config-string", "no-file", "entry-string", "file-outside", "device-file",
                                    "config-unbuildable"])
def test_bad_encoder_entry_of_the_start_card_is_one_line(finished, uint16_raster, tmp_path, capsys, change):  # noqa: F811
    init = tmp_path / "init"
    init.mkdir()
    for name in ("model.json", "model.safetensors", "encoder.safetensors"):
        shutil.copy(finished / name, init / name)
    card = json.loads((init / "model.json").read_text())
    assert card["encoder"]["file"] == "encoder.safetensors"
    if change == "config-string":
        card["encoder"]["config"] = "tiny"
    elif change == "no-file":
        del card["encoder"]["file"]
    elif change == "entry-string":
        card["encoder"] = "encoder.safetensors"
    elif change == "file-outside":
        card["encoder"]["file"] = "../elsewhere/encoder.safetensors"
        (tmp_path / "elsewhere").mkdir()
        shutil.copy(finished / "encoder.safetensors", tmp_path / "elsewhere")
    elif change == "device-file":
        card["encoder"]["file"] = "/dev/zero"
    else:
        card["encoder"]["config"]["channels"] = "abc"
    (init / "model.json").write_text(json.dumps(card))
    assert train_main(finetune_args(uint16_raster, tmp_path / "m", str(init))) == 2
    assert "'encoder" in one_line(capsys, str(init / "model.json"))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("change", ["huge-decoder", "weights-dev-zero"])
def test_start_card_that_does_not_fit_its_weights_is_one_line(finished, uint16_raster, tmp_path, capsys, change):  # noqa: F811
    """A card whose decoder has 4800 channels is refused before the network is built (the engine's
    bounds on a card, then its shapes compared on the meta device); weights that are a link to
    /dev/zero are never read."""
    init = tmp_path / "init"
    init.mkdir()
    for name in ("model.json", "model.safetensors", "encoder.safetensors"):
        shutil.copy(finished / name, init / name)
    if change == "huge-decoder":
        card = json.loads((init / "model.json").read_text())
        card["networks"]["decoder"]["config"]["channels"] = 4800
        (init / "model.json").write_text(json.dumps(card))
        fragment = "'networks.decoder.config.channels' is 4800"
    else:
        (init / "model.safetensors").unlink()
        (init / "model.safetensors").symlink_to("/dev/zero")
        fragment = "a model file must lie inside it"
    start = time.perf_counter()
    assert train_main(finetune_args(uint16_raster, tmp_path / "m", str(init))) == 2
    assert fragment in one_line(capsys, str(init / "model.json"))
    assert time.perf_counter() - start < 30 and not (tmp_path / "m").exists()


# 6. SIGTERM

def test_sigterm_checkpoints_like_ctrl_c(uint16_raster, tiny_init, tmp_path):  # noqa: F811
    """A batch scheduler's SIGTERM to the process group (the main process and its loader worker)
    during stage 1: the step finishes, a checkpoint is saved, one line, exit code 143, no
    temporary file; the same command resumes from the checkpoint."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "training", *finetune_args(uint16_raster, out, tiny_init, 100000, "--workers", "1")]
    p = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:  # training has started: its first line in the log, or its first checkpoint (at step 100)
        deadline, seen = time.monotonic() + 120, ""
        while "stage1: training from step 0" not in seen and not (out / "training" / "stage1" / "checkpoint.json").exists():
            assert time.monotonic() < deadline and p.poll() is None, seen
            if select.select([p.stderr], [], [], 1)[0]:
                seen += p.stderr.readline()
        time.sleep(1.0)
        os.killpg(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    lines = err.strip().splitlines()
    assert p.returncode == 143 and "Traceback" not in err, err
    assert lines[-1].startswith("terminated: stopped at step "), err
    step = int(lines[-1].split("stopped at step ")[1].split(";")[0])
    state = json.loads((out / "training" / "stage1" / "checkpoint.json").read_text())
    assert step >= 1 and state["step"] == step
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")] and not (out / "model.json").exists()


# 7. memory

def test_validation_of_a_huge_raster_reads_a_bounded_validity_map(tmp_path):
    """A 16000² VRT over a NAIP tile: the validation windows come from a decimated validity map, so
    the peak memory stays near what the window search needed (a full-resolution map: about 3 GB)."""
    vrt = str(tmp_path / "big.vrt")
    gdal.Translate(vrt, NAIP, format="VRT", width=16000, height=16000)
    code = ("import resource, sys\n"
            "from training import rasters\n"
            f"src = rasters.RasterSet([{vrt!r}], None, crop=96, val_crop=128)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "val = src.validation(128, 16)\n"
            "import numpy as np\n"
            "assert val.shape == (16, 4, 128, 128) and np.isfinite(val).all(), val.shape\n"
            "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    before, peak = (int(v) for v in r.stdout.split())
    assert peak - before < 150 * 1024, (before, peak)  # kB: the validation adds less than 150 MB
