"""engine.card is the one place that reads a model card's JSON: parsed, checked and defaulted once when a
bundle is opened, written back key for key, and read by its typed fields everywhere else."""
import ast
import json
from pathlib import Path

import pytest

from engine import modelfile, reach
from engine.card import Card, MethodSpec, parse
from engine.errors import LatentSRError
from engine.registry import REGISTRY
from tests.conftest import ROOT
from training.bundle import random_bundle, write


def test_the_bundled_card_round_trips_byte_for_byte():
    folder = modelfile.resolve(None)
    card = modelfile.read_card(folder)
    assert isinstance(card, Card) and card.bands == 3 and card.latent == 16 and card.decoder == "decoder"
    e2, lcm = card.methods["e2diffsr"], card.methods["lcmsr"]
    assert (e2.eta, e2.prediction, e2.betas, e2.steps, e2.max_steps) == (0.0, "x0", (0.1, 0.3, 0.6, 0.9), 4, 4)
    assert (lcm.T, lcm.sigma_data, lcm.steps, lcm.max_steps) == (1000, 0.5, 1, 4)
    for spec in (e2, lcm):  # make bench --set-default searched them on its 0.01 grid
        assert 0.0 <= spec.detail_default <= 1.0 and round(spec.detail_default, 2) == spec.detail_default
    assert card.onnx.graphs["lcmsr.onestep"].networks == ("lcmsr.condition", "lcmsr.denoiser", "decoder")
    text = (folder / modelfile.CARD).read_text()
    assert json.dumps(card.to_json(), indent=2) + "\n" == text
    assert parse(card.to_json(), folder / modelfile.CARD) == card


def test_a_random_bundle_round_trips_through_its_folder(tmp_path):
    card, tensors = random_bundle("tiny", seed=1, name="tiny")
    assert card.latent == 16 and card.methods["regression"].steps == 0
    folder = write(tmp_path / "tiny", card, tensors)
    read, _ = modelfile.load(str(folder))
    assert read.to_json() == json.loads((folder / modelfile.CARD).read_text())
    assert parse(read.to_json()) == read
    assert read.methods == card.methods and read.networks == card.networks


def test_defaults_live_in_the_card():
    """A card that leaves out a field gets its default once, the one each reader sees, and it is not
    written back."""
    card, _ = random_bundle("tiny", seed=1)
    raw = card.to_json()
    del raw["latent"], raw["decoder"]
    raw["methods"]["e2diffsr"] = {"condition": "e2diffsr.condition", "denoiser": "e2diffsr.denoiser"}
    bare = parse(raw)
    assert bare.latent == card.networks["decoder"].config["latent"] and bare.decoder == "decoder"
    e2 = bare.methods["e2diffsr"]
    assert (e2.eta, e2.prediction, e2.latent_scale, e2.steps, e2.max_steps) == (1.0, "eps", 1.0, 4, 4)
    assert e2.detail_default == REGISTRY["e2diffsr"].default_detail and e2.latent == bare.latent
    assert bare.to_json() == raw
    raw["methods"]["e2diffsr"].update(betas=[0.2, 0.9], max_steps=3, eta=0)  # the betas give the steps
    assert parse(raw).methods["e2diffsr"].max_steps == 2 and parse(raw).to_json() == raw


@pytest.mark.parametrize("edit,named", [
    (lambda c: c.__setitem__("bands", 0), "'bands' must be a whole number"),
    (lambda c: c["methods"]["lcmsr"].__setitem__("steps", 9), "'methods.lcmsr.steps' is 9"),
    (lambda c: c["methods"]["lcmsr"].__setitem__("detail_default", 2), "'methods.lcmsr.detail_default' is 2"),
    (lambda c: c["methods"]["lcmsr"].__setitem__("latent_scale", -1), "'methods.lcmsr.latent_scale'"),
    (lambda c: c["methods"]["e2diffsr"].__setitem__("denoiser", "nowhere"), "'methods.e2diffsr.denoiser' names"),
    (lambda c: c["networks"]["decoder"].__setitem__("kind", "oracle"), "'networks.decoder.kind'"),
    (lambda c: c["methods"]["lcmsr"].__setitem__("sample_edge", [6, 7]), "'methods.lcmsr.sample_edge' must list 4"),
    (lambda c: c["methods"]["e2diffsr"].__setitem__("sample_edge", [6, -1, 7, 8]), "'methods.e2diffsr.sample_edge'"),
    (lambda c: c["methods"]["e2diffsr"].__setitem__("sample_edge", [6, True, 7, 65]), "between 0 and 64"),
    (lambda c: c["methods"]["regression"].__setitem__("sample_edge", []), "regression does not sample"),
], ids=["bands", "steps", "detail", "latent-scale", "role", "kind", "edge-count", "edge-negative", "edge-type",
        "edge-deterministic"])
def test_a_writer_cannot_write_what_the_reader_refuses(tmp_path, edit, named):
    card, tensors = random_bundle("tiny", seed=1)
    raw = card.to_json()
    edit(raw)
    with pytest.raises(LatentSRError, match=named):
        parse(raw)
    with pytest.raises(LatentSRError, match=named):
        card.updated(**raw)
    assert not (tmp_path / "never").exists()


def test_the_sampled_latents_edge_is_the_cards_at_each_step_count():
    """A card's measured edge (training.reach) is read per step count and written back; a card without
    one gets the edge measured before cards had one."""
    card, _ = random_bundle("tiny", seed=1)
    raw = card.to_json()
    assert card.methods["e2diffsr"].sample_edge is None
    assert [card.methods["e2diffsr"].edge(k) for k in (1, 4)] == [reach.SAMPLE_EDGE_CELLS] * 2
    raw["methods"]["e2diffsr"]["sample_edge"] = [4, 9, 11, 12]
    e2 = parse(raw).methods["e2diffsr"]
    assert [e2.edge(k) for k in (1, 2, 3, 4)] == [4, 9, 11, 12]
    assert parse(raw).to_json() == raw and parse(raw).methods["lcmsr"].edge(1) == reach.SAMPLE_EDGE_CELLS


def test_a_stage_runs_card_holds_its_method_at_the_top():
    raw = {"kind": "lcmsr", "latent": 16, "latent_scale": 0.5, "stage1": {"sha256": "ab"}, "T": 1000,
           "sigma_data": 0.5, "steps": 1, "max_steps": 4, "networks": {}, "name": "lcmsr-stage", "bands": 3}
    card, _ = random_bundle("tiny")
    raw["networks"] = {role: card.networks[f"lcmsr.{role}"].to_json() for role in ("condition", "denoiser")}
    stage = parse(raw)
    assert isinstance(stage.stage, MethodSpec) and stage.stage.latent_scale == 0.5 and stage.stage1 == "ab"
    assert stage.to_json() == raw


# the names under which engine/, training/, provider/ and ui/ hold a card or a part of one
CARD_NAMES = {"card", "card1", "card2", "stage_card", "spec", "entry", "layout", "onnx", "weights", "encoder"}


def card_reads(tree: ast.AST) -> list[ast.Call]:
    """Calls ``X.get(...)`` where X is a card or a part of one (a name in CARD_NAMES, an attribute of
    one, or an attribute named ``card``/``spec``/``layout``/``onnx``)."""
    def cardish(node) -> bool:
        while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            if isinstance(node, ast.Attribute) and node.attr in CARD_NAMES:
                return True
            node = node.func if isinstance(node, ast.Call) else node.value
        return isinstance(node, ast.Name) and node.id in CARD_NAMES
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get" and cardish(node.func.value)]


def test_no_card_field_is_read_with_a_default_outside_the_card():
    """Outside engine/card.py and engine/registry/ (and the tests) no source file reads a model card's
    field with ``.get``: the card is parsed, checked and defaulted once (engine.card), and read by its
    typed fields."""
    root = Path(ROOT)
    skip = {root / "engine" / "card.py"}
    found = [f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}"
             for top in ("engine", "training", "provider", "ui") for path in sorted((root / top).rglob("*.py"))
             if path not in skip and root / "engine" / "registry" not in path.parents
             for node in card_reads(ast.parse(path.read_text(encoding="utf-8")))]
    assert found == []


def test_the_scan_sees_the_reads_it_forbids():
    code = 'a = card.get("latent", 4)\nb = spec.get("eta", 1.0)\nc = self.card.get("onnx")\n' \
           'd = card["methods"].get(name, {})\ne = entry.get("sha256")\nf = options.get("seed", 0)\n'
    assert [ast.unparse(n.func.value) for n in card_reads(ast.parse(code))] == \
        ["card", "spec", "self.card", "card['methods']", "entry"]
