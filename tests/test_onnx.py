"""ONNX export and the ONNX Runtime backend: parity with torch, verification, backend choice."""
import json
import shutil

import numpy as np
import onnx
import pytest

from engine import modelfile
from engine.card import parse
from engine.errors import LatentSRError
from engine.grid import Grid, centres
from engine.methods import MethodOptions, build_method, choose_backend, from_bundle
from engine.onnx_backend import PROBE_GRAPH, OnnxNetworks
from training import export
from training.cli import main as training_main
from training.bundle import random_bundle, write

RUNS = [("regression", None), ("e2diffsr", 2), ("e2diffsr", 4), ("lcmsr", 1), ("lcmsr", 2)]
SEED = 7


def exported_bundle(folder):
    """A tiny random bundle in ``folder`` with its ONNX graphs: (card, tensors, folder). Its latent scale
    is not 1, as in a trained bundle."""
    card, tensors = random_bundle("tiny", seed=2, name="tiny")
    card = card.updated(methods={name: dict(spec.to_json(), latent_scale=1.7) for name, spec in card.methods.items()})
    write(folder, card, tensors)
    export.export(str(folder))
    return card, tensors, str(folder)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_bundle(tmp_path_factory.mktemp("onnx") / "tiny")


@pytest.fixture(scope="module")
def methods(exported):
    """(name, steps) -> (torch method, onnx method), built once: the sessions are reused across tiles."""
    card, tensors, folder = exported
    return {(name, steps): (from_bundle(name, card, tensors, steps, "cpu"),
                            build_method(name, MethodOptions(steps, "onnx", "cpu", folder)))
            for name, steps in RUNS}


def tile(c=4, h=21, w=26, seed=0):
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32)


@pytest.mark.parametrize("scale", [2.0, 2.5, 4.0])
@pytest.mark.parametrize("name,steps", RUNS)
def test_parity_with_torch(methods, name, steps, scale):
    torch_method, onnx_method = methods[name, steps]
    assert isinstance(onnx_method.nets, OnnxNetworks) and onnx_method.steps == torch_method.steps
    assert onnx_method.multiple == torch_method.multiple and onnx_method.deterministic == torch_method.deterministic
    x = tile()
    whole = Grid.whole(21, 26, scale)
    # a tile inside a larger raster: offset output rows, a latent aligned to the global grid
    part = Grid(centres(60, round(60 * scale), 17, 17 + round(15 * scale), 20), whole.xs, scale, out_y0=17, in_y0=20)
    for grid in (whole, part):
        ref, out = torch_method(x, grid, SEED), onnx_method(x, grid, SEED)
        assert out.shape == ref.shape == (4, *grid.shape) and out.dtype == np.float32
        # 1e-3 is the requirement; the graphs match to about 1e-7, and a tiny random decoder moves only
        # about 1e-4 with its latent, so 1e-5 also catches a wrong latent, noise or latent scale
        assert np.abs(out - ref).max() <= 1e-5


def test_same_seed_same_noise_across_backends(exported, methods):
    """The outputs match because both backends draw the same noise: another seed on one side breaks it."""
    card, tensors, folder = exported
    x, grid = tile(seed=3), Grid.whole(21, 26, 2.5)
    for name in ("lcmsr", "e2diffsr"):
        steps = 2
        ref = from_bundle(name, card, tensors, steps, "cpu")(x, grid, SEED)
        same = methods[name, steps][1](x, grid, SEED)
        other = methods[name, steps][1](x, grid, SEED + 1)
        assert np.abs(same - ref).max() < 1e-5 < np.abs(other - ref).max()


def test_card_lists_verified_graphs_and_the_graphs_carry_the_card(exported):
    _, _, folder = exported
    folder = modelfile.resolve(folder)
    card = json.loads((folder / modelfile.CARD).read_text())
    graphs = card["onnx"]["graphs"]
    assert set(graphs) == {"decoder", "regression", "lcmsr.onestep", "lcmsr.condition", "lcmsr.denoiser",
                           "e2diffsr.condition", "e2diffsr.denoiser"}
    assert card["onnx"]["weights_sha256"] == card["weights"]["sha256"]
    for key, entry in graphs.items():
        data = (folder / entry["file"]).read_bytes()
        assert modelfile.sha256(data) == entry["sha256"]
        model = onnx.load_from_string(data)
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["latentsr.card"]) == {k: v for k, v in card.items() if k != "onnx"}
        assert meta["latentsr.graph"] == key
        # every parameter of the graph's networks lives in model.safetensors, none in the graph file
        assert all(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
        assert {i.external_data[0].value for i in model.graph.initializer} == {modelfile.WEIGHTS}
        assert all(any(i.name.startswith(net + ".") for net in entry["networks"]) for i in model.graph.initializer)
        assert max(onnx.numpy_helper.to_array(n.attribute[0].t).size for n in model.graph.node
                   if n.op_type == "Constant") <= 64
        for i in model.graph.input:  # batch, tile and latent sizes and table lengths are dynamic, not channels
            symbolic = [bool(d.dim_param) for d in i.type.tensor_type.shape.dim]
            if i.name.endswith(("_idx", "_w")):
                assert symbolic == [False, True]
            else:
                assert symbolic == ([True, False] if i.name in ("inv_scale", "t_frac") else [True, False, True, True])


def test_damaged_or_stale_graphs_are_refused(exported, tmp_path):
    _, _, folder = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    path = copy / "lcmsr.onestep.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LatentSRError, match="lcmsr.onestep.onnx does not match the SHA-256"):
        build_method("lcmsr", MethodOptions(backend="onnx", model=str(copy)))
    build_method("lcmsr", MethodOptions(steps=2, backend="onnx", model=str(copy)))  # other graphs still load
    path.unlink()
    with pytest.raises(LatentSRError, match="cannot read the ONNX graph .* run `python -m training export-onnx"):
        build_method("lcmsr", MethodOptions(backend="onnx", model=str(copy)))
    card_path = copy / modelfile.CARD
    card = json.loads(card_path.read_text())
    card["onnx"]["weights_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(LatentSRError, match="exported from other weights: run `python -m training export-onnx"):
        build_method("regression", MethodOptions(backend="onnx", model=str(copy)))


def test_missing_graphs_give_one_clear_line(tmp_path):
    folder = write(tmp_path / "plain", *random_bundle("tiny", name="plain"))
    with pytest.raises(LatentSRError) as err:
        build_method("lcmsr", MethodOptions(backend="onnx", model=str(folder)))
    hint = f"run `python -m training export-onnx --model {folder}`"
    assert str(err.value) == f"the model 'plain' has no ONNX graphs: {hint}"
    assert build_method("lcmsr", MethodOptions(model=str(folder))).__class__.__name__ == "LatentMethod"


def test_auto_follows_the_cpu_benchmark(exported, monkeypatch):
    card = modelfile.read_card(modelfile.resolve(exported[2]))
    plain = parse({k: v for k, v in card.to_json().items() if k != "onnx"})
    assert choose_backend("auto", "cpu", card) == "onnx"
    assert choose_backend("auto", "cpu", plain) == "torch"
    with pytest.raises(LatentSRError, match="backend auto found no CUDA GPU"):  # no GPU here, whatever ORT lists
        choose_backend("auto", "cuda", card)
    assert choose_backend("onnx", "cuda", card) == "onnx" and choose_backend("torch", "cpu", card) == "torch"
    with pytest.raises(LatentSRError, match="unknown backend"):
        choose_backend("tensorrt", "cpu", card)
    import torch

    monkeypatch.setattr("engine.onnx_backend.cuda_works", lambda: True)
    assert choose_backend("auto", "cuda", card) == "onnx"  # ONNX Runtime starts a CUDA session, torch sees no GPU
    assert choose_backend("auto", "cpu", card) == "onnx"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("engine.methods.cpu_only_torch", lambda: False)
    assert choose_backend("auto", "cuda", card) == "torch"
    assert choose_backend("auto", "auto", card) == "torch"  # a CUDA torch that sees a GPU
    monkeypatch.setattr("engine.methods.cpu_only_torch", lambda: True)
    assert choose_backend("auto", "auto", card) == "onnx"  # a +cpu wheel is not even imported to ask
    monkeypatch.setattr("engine.methods.importable", lambda module: module != "torch")
    assert choose_backend("auto", "auto", plain) == "onnx"


def test_cuda_is_offered_only_when_a_session_really_starts():
    import onnxruntime

    from engine.methods import cuda_backend
    from engine.onnx_backend import cuda_works

    session = onnxruntime.InferenceSession(PROBE_GRAPH, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": np.array([2.5], np.float32)})[0], [2.5])  # a real graph
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():  # onnxruntime-gpu, as here
        started = onnxruntime.InferenceSession(PROBE_GRAPH, providers=["CUDAExecutionProvider"]).get_providers()
        assert cuda_works() == (started[0] == "CUDAExecutionProvider")
    import torch

    if not torch.cuda.is_available() and not cuda_works():  # this machine: no GPU
        card = modelfile.read_card(modelfile.resolve(None))  # with ONNX graphs
        assert cuda_backend("auto", card) is None and cuda_backend("onnx", None) is None


def test_default_model_from_the_environment(exported, monkeypatch):
    monkeypatch.setenv(modelfile.MODEL_ENV, exported[2])
    assert modelfile.resolve(None) == modelfile.resolve(exported[2])
    assert build_method("regression", MethodOptions(backend="onnx")).name == "regression"


def test_export_fails_when_a_graph_drifts_from_the_bundles_networks(tmp_path, monkeypatch, capsys):
    """The export check compares each graph with networks built anew from the bundle: a decoder that
    drifts by +0.01 while it is exported makes `python -m training export-onnx` fail with one line."""
    folder = write(tmp_path / "drift", *random_bundle("tiny", seed=3, name="drift"))
    build_networks = modelfile.build_networks
    calls = []

    def drifting(card, tensors, names, device):
        nets = build_networks(card, tensors, names, device)
        if not calls:  # the networks that get exported; the check's reference is built by a later call
            nets["decoder"].register_forward_hook(lambda module, args, out: out + 0.01)
        calls.append(names)
        return nets

    monkeypatch.setattr(modelfile, "build_networks", drifting)
    assert training_main(["export-onnx", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(calls) == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: the ONNX graph decoder differs from the bundle's torch networks by 0.01")
    monkeypatch.setattr(modelfile, "build_networks", build_networks)
    assert training_main(["export-onnx", "--model", str(folder)]) == 0


@pytest.mark.parametrize("detail", [0.0, 0.5])
@pytest.mark.parametrize("name,steps", [("lcmsr", 1), ("e2diffsr", 2)])
def test_detail_parity_with_torch(exported, name, steps, detail):
    """Below D = 1 LCMSR's one-step graph cannot blend the latents: the condition, denoiser and decoder
    graphs run engine.latent.run_tile, as torch does."""
    card, tensors, folder = exported
    onnx_method = build_method(name, MethodOptions(steps, "onnx", "cpu", folder, detail=detail))
    assert onnx_method.nets.fused is None and onnx_method.detail == detail
    x, grid = tile(seed=5), Grid.whole(21, 26, 2.5)
    ref = from_bundle(name, card, tensors, steps, "cpu", detail=detail)(x, grid, SEED)
    assert np.abs(onnx_method(x, grid, SEED) - ref).max() <= 1e-5


def test_each_networks_named_inputs_are_its_forward_and_its_graphs_inputs_in_order(exported):
    """engine.models.inputs names each network's inputs once: its fields are the network's forward
    parameters and its ONNX graph's inputs, in order, in a fresh export and in the shipped bundle's graphs."""
    import inspect

    from engine.models import build, preset
    from engine.models.inputs import INPUTS, fused_inputs
    from engine.registry import REGISTRY

    for kind, inputs in INPUTS.items():
        forward = build(kind, preset("tiny", kind, bands=3, latent=4)).forward
        assert tuple(inspect.signature(forward).parameters) == inputs._fields
    _, _, folder = exported
    for card, where in ((modelfile.read_card(modelfile.resolve(folder)), folder),
                        (modelfile.read_card(modelfile.resolve(None)), modelfile.resolve(None))):
        graphs = card.onnx.graphs
        for net, entry in card.networks.items():
            names = list(INPUTS[entry.kind]._fields)
            assert list(graphs[net].inputs) == names
            assert [i.name for i in onnx.load(f"{where}/{graphs[net].file}", load_external_data=False).graph.input] == names
        for name in card.methods:
            method = REGISTRY[name]
            if method.fused_graph:
                assert list(graphs[method.fused_graph].inputs) == list(fused_inputs(method.fused_inputs))
