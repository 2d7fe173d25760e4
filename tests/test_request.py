"""The run request: the run options stated once (engine.methods.RunOptions), checked when made, held
whole by a run's and an evaluation's request, and read and written by the CLI and Processing from
that one list of fields."""
from __future__ import annotations

import dataclasses

import pytest

from engine import cli
from engine.errors import LatentSRError
from engine.evaluate import EvaluateRequest
from engine.methods import RunOptions
from engine.pipeline import Request

OTHER = {"method": "e2diffsr", "steps": 2, "detail": 0.5, "backend": "onnx", "device": "cpu", "model": "mine",
         "consistency": True, "precision": "float32", "seed": 9, "samples": 3}  # a value other than the default, per option


def test_a_run_and_an_evaluation_hold_the_same_run_options_and_restate_none():
    run = {f.name for f in dataclasses.fields(RunOptions)}
    assert set(OTHER) == run
    for request in (Request, EvaluateRequest):
        fields = {f.name: f for f in dataclasses.fields(request)}
        assert fields["options"].default == RunOptions() and not run & set(fields), request.__name__
    assert dataclasses.fields(Request) and Request.__dataclass_params__.frozen
    assert RunOptions.__dataclass_params__.frozen


@pytest.mark.parametrize("field, value, message", [
    ("detail", 1.5, "detail must be between 0 and 1"), ("detail", float("nan"), "detail must be between 0 and 1"),
    ("detail", "sharp", "detail must be a number"), ("steps", 0, "steps must be at least 1"),
    ("samples", 0, "samples must be at least 1"), ("seed", -1, "seed must be between"),
    ("method", "magic", "unknown method"), ("backend", "tensorrt", "unknown backend"), ("device", "tpu", "unknown device"),
])
def test_run_options_are_checked_when_made(field, value, message):
    with pytest.raises(LatentSRError, match=message):
        RunOptions(**{field: value})


def test_detail_is_made_a_number_once_and_a_deterministic_method_takes_one_sample():
    assert RunOptions(detail="0.25").detail == 0.25
    with pytest.raises(LatentSRError, match="deterministic"):
        RunOptions(method="bicubic", samples=2)


def test_both_commands_build_the_run_options_from_their_flags():
    args = cli.parser().parse_args(["superresolve", "in.tif", "out.tif", "--scale", "2", "--method", "e2diffsr",
                                    "--steps", "2", "--detail", "0.5", "--backend", "onnx", "--device", "cpu",
                                    "--model", "mine", "--consistency", "--precision", "float32", "--seed", "9",
                                    "--samples", "3"])
    assert cli.run_options(args) == RunOptions(**OTHER)
    args = cli.parser().parse_args(["evaluate", "--hr", "hr.tif", "--scale", "2", "--method", "e2diffsr", "--steps", "2",
                                    "--detail", "0.5", "--seed", "9"])
    assert cli.run_options(args) == RunOptions(method="e2diffsr", steps=2, detail=0.5, seed=9)


def test_the_result_label_comes_from_the_options():
    assert RunOptions(method="lcmsr", detail=0.25, seed=7).label() == "LCMSR D0.25 s7"
    assert RunOptions(method="e2diffsr", detail=0.0, seed=7).label() == "E²DiffSR D0"  # no seed where it does not matter
    assert RunOptions(method="bicubic", seed=7).label() == "Bicubic"


def test_processing_reads_and_writes_every_run_option(provider):
    from qgis.core import QgsProcessingContext

    from latentsr.engine.methods import RunOptions as PluginRunOptions
    from latentsr.provider.algorithm import READ, run_parameters

    assert set(READ) == {f.name for f in dataclasses.fields(PluginRunOptions)}
    options = PluginRunOptions(**OTHER)
    alg = provider.algorithm("superresolve")
    assert alg.run_options(run_parameters(options), QgsProcessingContext()) == options
    assert alg.run_options({}, QgsProcessingContext()) == PluginRunOptions()
    evaluate = provider.algorithm("evaluate")  # it has no SAMPLES or CONSISTENCY: those keep their defaults
    taken = {k: v for k, v in OTHER.items() if k not in ("samples", "consistency")}
    assert evaluate.run_options(run_parameters(options), QgsProcessingContext()) == PluginRunOptions(**taken)


def test_the_detail_parameters_take_the_engines_range(provider):
    from latentsr.engine.methods import DETAIL_RANGE

    for name in ("superresolve", "evaluate"):
        detail = provider.algorithm(name).parameterDefinition("DETAIL")
        assert (detail.minimum(), detail.maximum()) == DETAIL_RANGE, name
