"""--precision (engine.precision): which arithmetic auto takes on which CPU (simulated), the runner
line that says it, the CLI's one-line errors, and bf16 within the quality limits on a small raster."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from engine import metrics, precision
from engine.errors import LatentSRError
from engine.grid import Grid
from engine.methods import MethodOptions, RunOptions, build_method, describe_runner
from tests.conftest import DATA, SAMPLE
from tests.test_bad_inputs import cli, one_line_error
from training.bench.precision import MAX_LSD_RISE, MAX_PSNR_LOSS
from training.bench.quality import hr_lr, quantise
from training.bundle import random_bundle, write

WITHOUT = {"fpu", "avx2", "avx512f", "avx512_vnni"}  # a CPU without bfloat16 units
WITH = WITHOUT | set(precision.AUTO_CPU_FLAGS)
VAL_IMAGE = f"{DATA}/ucmerced/val/harbor/harbor85.png"


def test_auto_takes_bf16_only_for_torch_on_a_cpu_with_the_units(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: WITHOUT)
    assert precision.choose("auto", "torch", "cpu") == "float32"
    assert precision.choose("bf16", "torch", "cpu") == "bf16"  # asked for: emulated, with a warning
    monkeypatch.setattr(precision, "cpu_flags", lambda: WITH)
    assert precision.choose("auto", "torch", "cpu") == "bf16"
    assert precision.choose("float32", "torch", "cpu") == "float32"  # switched off
    assert precision.choose("auto", "torch", "cuda") == "float32"  # a GPU's bf16 was not measured
    assert precision.choose("auto", "onnx", "cpu") == "float32"  # ONNX Runtime: float32 only
    with pytest.raises(LatentSRError, match="needs backend torch"):
        precision.choose("bf16", "onnx", "cpu")
    with pytest.raises(LatentSRError, match="unknown precision 'int8'"):
        precision.choose("int8", "torch", "cpu")
    with pytest.raises(LatentSRError, match="unknown precision"):
        RunOptions(precision="fast")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("precision") / "tiny"
    write(folder, *random_bundle("tiny", seed=3, name="tiny"))
    return str(folder)


@pytest.mark.parametrize("flags, choice, runs", [(WITHOUT, "auto", "float32"), (WITH, "auto", "bf16"),
                                                 (WITH, "float32", "float32")])
def test_runner_line_says_which_precision_runs(tiny_model, monkeypatch, caplog, flags, choice, runs):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    with caplog.at_level(logging.INFO, logger="engine"):
        method = build_method("regression", MethodOptions(backend="torch", device="cpu", model=tiny_model,
                                                          precision=choice))
    assert method.nets.precision == runs
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("regression: model tiny"))
    assert f"backend torch on cpu, {runs}," in line, line
    if choice == "auto":  # the dock's runner label says bf16 when it would run
        assert describe_runner("regression", "torch", "cpu").endswith(", bf16") == (runs == "bf16")


def test_cli_precision_errors_are_one_line(tmp_path):
    out = tmp_path / "sr.tif"
    one_line_error(cli("superresolve", SAMPLE, out, "--scale", "2", "--precision", "int8"),
                   "argument --precision: invalid choice: 'int8'")
    one_line_error(cli("superresolve", SAMPLE, out, "--scale", "2", "--method", "regression", "--backend", "onnx",
                       "--precision", "bf16"), "precision bf16 needs backend torch")
    assert list(tmp_path.iterdir()) == []


def test_bf16_stays_within_the_limits_on_a_small_raster():
    """The bundled model's regression and LCMSR in bf16 against float32 (torch) on one val image at ×4,
    scored as the precision bench scores them: within the limits it ships bf16 under."""
    hr, lr = hr_lr(VAL_IMAGE, 4.0)
    grid = Grid.whole(lr.shape[1], lr.shape[2], 4.0)
    for name, steps in (("regression", None), ("lcmsr", 1)):
        scores, outputs = {}, {}
        for choice in ("float32", "bf16"):
            method = build_method(name, MethodOptions(steps=steps, backend="torch", device="cpu", precision=choice))
            assert method.nets.precision == choice
            outputs[choice] = quantise(method(lr, grid, 0))
            s = metrics.crop_border(outputs[choice].astype(np.float64), math.ceil(4.0))
            h = metrics.crop_border(hr.astype(np.float64), math.ceil(4.0))
            scores[choice] = metrics.psnr(s, h, 255.0), metrics.lsd(s, h)
        assert not np.array_equal(outputs["float32"], outputs["bf16"])  # bf16 did run
        (p32, l32), (p16, l16) = scores["float32"], scores["bf16"]
        assert p16 - p32 >= -MAX_PSNR_LOSS and l16 - l32 <= MAX_LSD_RISE, (name, scores)


def test_the_bench_quantises_every_graph_of_a_method_to_int8(tmp_path):
    """The precision bench's dynamic int8 path (training.bench.precision.quantised) swaps each ONNX
    graph of the bundled regression for its quantisation, read from the typed card; the result stays
    an SR of the right shape, close to float32 but not identical to it."""
    from training.bench.precision import quantised

    hr, lr = hr_lr(VAL_IMAGE, 4.0)
    lr = np.ascontiguousarray(lr[:, :24, :24])
    grid = Grid.whole(24, 24, 4.0)
    options = MethodOptions(backend="onnx", device="cpu", threads=1)
    exact = build_method("regression", options)(lr, grid, 0)
    int8 = quantised("regression", "dynamic", options, 4.0, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.dynamic.onnx")) == ["regression.dynamic.onnx"]
    out = int8(lr, grid, 0)
    assert out.shape == exact.shape == (3, 96, 96) and not np.array_equal(out, exact)
    assert np.abs(out - exact).mean() < 0.02  # a few DN in normalised units
