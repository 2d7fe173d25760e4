"""engine.registry is the one place that knows the SR methods: their names, step ranges and graphs."""
import re
from pathlib import Path

import pytest

from engine import cli
from engine.errors import LatentSRError
from engine.methods import MethodOptions, build_method
from engine.registry import MAX_STEPS, METHODS, REGISTRY

from tests.conftest import ROOT

# a method's name in quotes; torch's and PIL's interpolation mode "bicubic" is not a method
NAME = re.compile(r"""(?<!mode=)(["'])(%s)\1""" % "|".join(map(re.escape, METHODS)))


def test_no_method_name_outside_the_registry():
    """Outside engine/registry/ (and the tests) no source file spells a method's name: each asks the
    registry, so a method is added by one new file there and one line in REGISTRY."""
    root = Path(ROOT)
    registry = root / "engine" / "registry"
    found = [f"{path.relative_to(root)}:{n}: {line.strip()}"
             for top in ("engine", "training", "provider", "ui") for path in sorted((root / top).rglob("*.py"))
             if registry not in path.parents
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if NAME.search(line)]
    assert found == []


def test_the_registry_keeps_the_processing_and_cli_order():
    assert METHODS == ("lcmsr", "e2diffsr", "regression", "bicubic")  # the Processing enum's indices
    method = next(a for a in cli.parser()._subparsers._group_actions[0].choices["superresolve"]._actions
                  if a.dest == "method")
    assert tuple(method.choices) == METHODS and method.default == METHODS[0]


@pytest.mark.parametrize("name", [m.name for m in REGISTRY.values() if m.stochastic])
def test_the_engine_accepts_exactly_the_registrys_steps(name):
    """The CLI and Processing hand --steps/STEPS to the engine, which refuses a count outside the
    registry's range before loading any network (Processing's maximum: test_steps_maximum_is_the_engines)."""
    top = REGISTRY[name].max_steps
    assert 1 <= REGISTRY[name].default_steps <= top <= MAX_STEPS
    for steps in (0, top + 1):
        with pytest.raises(LatentSRError, match=f"steps must be between 1 and {top} for {name}"):
            build_method(name, MethodOptions(steps=steps, backend="onnx", device="cpu"))


def test_processing_steps_and_methods_are_the_registrys(provider):
    for alg in ("superresolve", "evaluate"):
        definition = provider.algorithm(alg).parameterDefinition("STEPS")
        assert (definition.minimum(), definition.maximum()) == (0, MAX_STEPS)
    options = provider.algorithm("superresolve").parameterDefinition("METHOD").options()
    assert options == [REGISTRY[name].label for name in METHODS]
