"""Model folders as untrusted input (issue 23): every file a model card names lies inside the folder
and is a bounded regular file, nothing outside the folder is ever written or removed, the card's
configs are checked against the weights before any network is built, the engine's step bounds apply
to cards, and every refusal is one line through the CLI, ``python -m training`` and Processing."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from engine import modelfile
from tests.conftest import ROOT, SAMPLE
from tests.test_bad_inputs import cli, fingerprint, one_line_error
from training.bundle import random_bundle, write

MEMORY = 3 << 30  # address-space cap of the runs: a run that would fill the memory fails instead


def cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def engine_run(folder, *extra, timeout=120):
    """superresolve of the sample with the model in ``folder`` (capped in memory and time)."""
    return cli("superresolve", SAMPLE, folder.parent / "sr.tif", "--scale", "2", "--model", folder, *extra,
               timeout=timeout, preexec_fn=cap_memory)


def training_run(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap_memory)


def processing_error(provider, folder, method: int = 2, **params) -> str:
    """The message of the QgsProcessingException of a superresolve run with the model in ``folder``."""
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as err:
        processing.run("latentsr:superresolve", {"INPUT": SAMPLE, "SCALE": 2, "METHOD": method, "MODEL": str(folder),
                                                 "OUTPUT": str(folder.parent / "alg.tif"), **params})
    message = str(err.value).strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert not (folder.parent / "alg.tif").exists()
    return message


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny bundle with its ONNX graphs."""
    from training.export import export

    card, tensors = random_bundle("tiny", seed=2)
    folder = write(tmp_path_factory.mktemp("exported") / "model", card, tensors)
    export(str(folder))
    return folder


@pytest.fixture
def model(exported, tmp_path):
    """A copy of the exported bundle in tmp_path/models/model."""
    return shutil.copytree(exported, tmp_path / "models" / "model")


def edit_card(folder, edit) -> None:
    card = json.loads((folder / modelfile.CARD).read_text())
    edit(card)
    (folder / modelfile.CARD).write_text(json.dumps(card))


def resign_graph(folder, key: str, data: bytes) -> None:
    """Replace the card's graph ``key`` by ``data``, with its SHA-256 in the card."""
    card = json.loads((folder / modelfile.CARD).read_text())
    (folder / card["onnx"]["graphs"][key]["file"]).write_bytes(data)
    card["onnx"]["graphs"][key]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / modelfile.CARD).write_text(json.dumps(card))


# ---------------------------------------------------------------------------------------------
# 1. Card paths stay inside the model folder: export-onnx never removes or writes outside it.

@pytest.fixture
def thesis(tmp_path):
    """Someone's files beside the model folder: a document and a graph of another model."""
    path = tmp_path / "victim" / "thesis.docx"
    path.parent.mkdir()
    path.write_bytes(b"four years of work")
    (path.parent / "other.onnx").write_bytes(b"another model's graph")
    return path


@pytest.mark.parametrize("name", ["../../victim/thesis.docx", "../../victim/other.onnx", "{victim}/other.onnx",
                                  "docs/other.onnx", "docs/../../../victim/other.onnx"],
                         ids=["dotdot-docx", "dotdot", "absolute", "symlink", "inner-dotdot"])
def test_export_never_removes_a_file_outside_the_folder(model, thesis, tmp_path, name):
    (model / "docs").symlink_to(thesis.parent)
    name = name.format(victim=thesis.parent)
    edit_card(model, lambda c: c["onnx"]["graphs"].__setitem__("old", dict(c["onnx"]["graphs"]["decoder"], file=name)))
    before = fingerprint(tmp_path)
    line = one_line_error(training_run("export-onnx", "--model", model), "'onnx.graphs.old.file'")
    if name.endswith(".onnx"):
        assert "model folder" in line
    assert fingerprint(tmp_path) == before
    one_line_error(engine_run(model, "--method", "regression"), "'onnx.graphs.old.file'")


def test_card_paths_refused_through_processing(model, thesis, provider):
    edit_card(model, lambda c: c["onnx"]["graphs"]["decoder"].__setitem__("file", "../../victim/thesis.docx"))
    assert "onnx.graphs.decoder.file" in processing_error(provider, model)


def test_export_writes_nothing_outside_the_folder(tmp_path):
    """A network named to lead out of the folder would name its graph file outside it."""
    card, tensors = random_bundle("tiny", seed=2)
    bad = "../escaped"
    tensors = {(bad + k[len("decoder"):] if k.startswith("decoder.") else k): v for k, v in tensors.items()}
    folder = write(tmp_path / "models" / "model", card, tensors)  # the card is made by hand: no writer makes it
    edit_card(folder, lambda c: c.update(networks={bad if k == "decoder" else k: v for k, v in c["networks"].items()},
                                         decoder=bad))
    before = fingerprint(tmp_path)
    one_line_error(training_run("export-onnx", "--model", folder), "'networks' has a network named '../escaped'")
    assert fingerprint(tmp_path) == before


def test_export_does_not_write_through_a_stale_temporary_symlink(model, thesis, tmp_path):
    """A ``*.tmp`` symlink in the folder is replaced, never followed."""
    from training.export import export

    (model / "decoder.onnx.tmp").symlink_to(thesis)
    (model / "model.json.tmp").symlink_to(thesis)
    export(str(model))
    assert thesis.read_bytes() == b"four years of work"
    assert not [p.name for p in model.iterdir() if p.name.endswith(".tmp")]
    assert cli("superresolve", SAMPLE, tmp_path / "sr.tif", "--scale", "2", "--method", "regression", "--backend",
               "onnx", "--model", model).returncode == 0


# ---------------------------------------------------------------------------------------------
# 2. Model files are regular files inside the folder, read with a size bound.

def link_to_dev_zero(folder, name):
    (folder / name).unlink()
    (folder / name).symlink_to("/dev/zero")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_weights_symlinked_to_dev_zero(model, backend, provider):
    link_to_dev_zero(model, modelfile.WEIGHTS)
    one_line_error(engine_run(model, "--method", "regression", "--backend", backend, timeout=60), modelfile.WEIGHTS)
    assert modelfile.WEIGHTS in processing_error(provider, model, BACKEND={"torch": 1, "onnx": 2}[backend])


def test_graph_symlinked_to_dev_zero(model, provider):
    link_to_dev_zero(model, "regression.onnx")
    line = one_line_error(engine_run(model, "--method", "regression", "--backend", "onnx", timeout=60), "regression.onnx")
    assert "outside the model folder" in line
    assert "regression.onnx" in processing_error(provider, model, BACKEND=2)


def test_graph_that_is_a_fifo(model):
    """Inside the folder but not a regular file: refused without opening it for a blocking read."""
    (model / "regression.onnx").unlink()
    os.mkfifo(model / "regression.onnx")
    one_line_error(engine_run(model, "--method", "regression", "--backend", "onnx", timeout=60),
                   "regression.onnx is not a regular file")


def test_graph_larger_than_the_bound(model):
    with open(model / "regression.onnx", "r+b") as f:
        f.truncate(modelfile.GRAPH_LIMIT + 1)  # sparse: no disk used
    one_line_error(engine_run(model, "--method", "regression", "--backend", "onnx", timeout=60), "more than the 256 MiB")


def test_safetensors_longer_than_its_header_says(model):
    """Trailing bytes (re-signed): the header's extent must be the file's."""
    data = (model / modelfile.WEIGHTS).read_bytes() + b"\0" * 1000
    (model / modelfile.WEIGHTS).write_bytes(data)
    edit_card(model, lambda c: c["weights"].__setitem__("sha256", hashlib.sha256(data).hexdigest()))
    one_line_error(engine_run(model, "--method", "regression", "--backend", "torch"), "its header describes")


# ---------------------------------------------------------------------------------------------
# 3. The card's config is checked against the weights' shapes before a network is built.

@pytest.mark.parametrize("channels,fragment", [(4800, "'networks.decoder.config.channels' is 4800"),
                                               (4000, "do not fit 'networks.decoder.config.channels'")])
def test_huge_decoder_refused_before_it_is_built(model, provider, channels, fragment):
    """4800 is above the bound of a network's sizes; 4000 is within it, and does not fit the weights:
    either is refused under a 3 GiB address-space cap, where building it would not fit (8.9 GB at 4800)."""
    edit_card(model, lambda c: c["networks"]["decoder"]["config"].__setitem__("channels", channels))
    r = engine_run(model, "--method", "regression", "--backend", "torch")
    one_line_error(r, fragment)
    assert "networks.decoder.config.channels" in processing_error(provider, model, BACKEND=1)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_config_that_does_not_fit_the_weights_names_the_field(model, backend):
    edit_card(model, lambda c: c["networks"]["decoder"]["config"].__setitem__("channels", 96))
    line = one_line_error(engine_run(model, "--method", "regression", "--backend", backend),
                          "'networks.decoder.config.channels'")
    assert str(model / modelfile.CARD) in line


def test_shapes_checked_without_building(model, monkeypatch):
    """No network is built (off the meta device) for a card that does not fit its weights."""
    import torch

    from engine import models

    built = []
    real = models.build
    monkeypatch.setattr(models, "build", lambda kind, config: built.append(torch.empty(0).device.type) or real(kind, config))
    edit_card(model, lambda c: c["networks"]["decoder"]["config"].__setitem__("channels", 96))
    from engine.errors import LatentSRError

    with pytest.raises(LatentSRError, match="networks.decoder.config.channels"):
        modelfile.load(str(model))
    assert built and set(built) == {"meta"}


# ---------------------------------------------------------------------------------------------
# 4. The engine's step bounds apply to cards.

@pytest.mark.parametrize("fields,named", [({"steps": 10**9, "max_steps": 10**9}, "max_steps"), ({"steps": 9}, "steps"),
                                          ({"steps": 0}, "steps")], ids=["billion", "steps-9", "steps-0"])
def test_card_steps_within_the_engines_bounds(model, provider, fields, named):
    edit_card(model, lambda c: c["methods"]["lcmsr"].update(fields))
    line = one_line_error(engine_run(model, "--method", "lcmsr", "--backend", "torch", timeout=60),
                          f"'methods.lcmsr.{named}' is {fields[named]}")
    assert str(model / modelfile.CARD) in line and "1 to 4 steps" in line
    assert "methods.lcmsr" in processing_error(provider, model, method=0, BACKEND=1)


def test_card_betas_longer_than_the_engines_bound(model):
    edit_card(model, lambda c: c["methods"]["e2diffsr"].__setitem__("betas", [0.5] * 1000))
    one_line_error(engine_run(model, "--method", "e2diffsr", "--backend", "torch", timeout=60),
                   "'methods.e2diffsr.betas' gives 1000 steps")


# ---------------------------------------------------------------------------------------------
# 5. One line naming the model file for a deeply nested card, a graph with a foreign input and a
#    card whose denoiser has levels its graph does not.

def test_deeply_nested_card(model, provider):
    text = (model / modelfile.CARD).read_text()
    (model / modelfile.CARD).write_text(text[:-2] + ', "notes": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    line = one_line_error(engine_run(model, "--method", "regression"), str(model / modelfile.CARD))
    assert "nested too deeply" in line
    assert "nested too deeply" in processing_error(provider, model)


def foreign_graph(folder) -> bytes:
    """The bundle's regression graph with one more input, which the card does not list, added to its output."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(folder / "regression.onnx"), load_external_data=False)
    for node in model.graph.node:
        node.output[:] = ["sr_inner" if name == "sr" else name for name in node.output]
    model.graph.node.append(helper.make_node("Add", ["sr_inner", "secret_knob"], ["sr"]))
    model.graph.input.append(helper.make_tensor_value_info("secret_knob", TensorProto.FLOAT, [1]))
    return model.SerializeToString()


def test_graph_with_an_input_the_card_does_not_list(model, provider):
    resign_graph(model, "regression", foreign_graph(model))
    line = one_line_error(engine_run(model, "--method", "regression", "--backend", "onnx"), "regression.onnx")
    assert "'secret_knob'" in line
    assert "secret_knob" in processing_error(provider, model, BACKEND=2)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_denoiser_card_with_fourteen_levels(model, provider, backend):
    edit_card(model, lambda c: c["networks"]["lcmsr.denoiser"]["config"].__setitem__("channels", [8] * 14))
    line = one_line_error(engine_run(model, "--method", "lcmsr", "--detail", "0.5", "--backend", backend),
                          "'networks.lcmsr.denoiser.config")
    assert str(model / modelfile.CARD) in line
    backend_index = {"torch": 1, "onnx": 2}[backend]
    assert "lcmsr.denoiser" in processing_error(provider, model, method=0, DETAIL=0.5, BACKEND=backend_index)


# ---------------------------------------------------------------------------------------------
# 6. SIGINT or SIGTERM during export-onnx: one line, non-zero, no temporary file, the folder whole.

def loaded(pid: int, library: str) -> bool:
    try:
        return library in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_export_stopped_by_a_signal(model, tmp_path, sig):
    """The signal lands while the graphs are made (onnx is loaded once training.export is imported;
    making the tiny bundle's seven graphs takes seconds after that)."""
    for p in model.glob("*.onnx"):
        p.unlink()
    edit_card(model, lambda c: c.pop("onnx"))
    before = fingerprint(model)
    p = subprocess.Popen([sys.executable, "-m", "training", "export-onnx", "--model", str(model)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 60
    while not loaded(p.pid, "onnx_cpp2py_export") and time.time() < end:
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert p.returncode not in (0, -sig) and "Traceback" not in err, err
    assert len(lines) == 1 and f"stopped ({sig.name})" in lines[0], err
    assert not [q.name for q in model.iterdir() if q.name.endswith(".tmp")]
    assert fingerprint(model) == before  # stopped before the graphs were written: nothing changed
