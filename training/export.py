"""ONNX export of a bundle's inference graphs (python -m training export-onnx [--model NAME_OR_DIR]).

Writes into the bundle folder (see engine/onnx_backend.py for how the engine runs them):

- ``regression.onnx``: lr, inv_scale, tables -> sr (conditioning net + decoder);
- ``lcmsr.onestep.onnx``: lr, noise, inv_scale, tables -> sr (z0 = f(noise, T), then the decoder);
- ``<method>.condition.onnx``: lr, inv_scale, hr tables -> cond;
- ``<method>.denoiser.onnx``: z_t, cond, t_frac, inv_scale -> out (ε for E²DiffSR, F for LCMSR);
- ``decoder.onnx``: lr, z, inv_scale, out and lat tables -> sr.

Tile height and width, the batch (band groups) and the latent size are dynamic; the scale enters only as
inv_scale and through the index/weight tables of engine.models.sampling, so one graph serves every
scale. The graphs are the networks themselves (their forward is already laid out for ONNX Runtime's CPU
kernels, see engine/models/decoder.py), and the single-call graphs are engine.latent.run_tile over them:
this module restates no network's arithmetic and no part of the per-tile routine.

Weights: every network parameter becomes an external initializer named as in model.safetensors and
pointing into it, so the graph files hold only structure and small constants. The model card (without
its ``onnx`` entry) is in each graph's metadata_props; the card's ``onnx`` entry gets each graph's file,
SHA-256 and networks. Each graph is checked, at another tile size, scale and batch, against the networks
built anew from the bundle by engine.modelfile (composed by engine.latent for the single-call graphs);
a difference above TOLERANCE is a TrainingError.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from engine import modelfile
from engine.card import Card, MethodSpec
from engine.card import Graph as GraphEntry
from engine.grid import Grid
from engine.latent import run_tile
from engine.models.inputs import ConditionInputs, DecoderInputs, DenoiserInputs, fused_inputs
from engine.models.sampling import Plan, unet_multiple
from engine.onnx_backend import Sessions
from engine.registry import REGISTRY, Method
from engine.torch_backend import TorchNetworks, roles

from .errors import TrainingError
from .trainer import deferred_interrupts

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4  # max abs difference to torch at the check size, normalised units
AXES = {"lr": {0: "batch", 2: "height", 3: "width"}, "inv_scale": {0: "batch"}, "t_frac": {0: "batch"},
        "out_y": {1: "out_height"}, "out_x": {1: "out_width"}, "lat_y": {1: "height"}, "lat_x": {1: "width"},
        "hr_y": {1: "hr_height"}, "hr_x": {1: "hr_width"}, "sr": {0: "batch", 2: "out_height", 3: "out_width"}}
LATENT_AXES = {0: "batch", 2: "latent_height", 3: "latent_width"}


class Fused(nn.Module):
    """A method's whole tile in one graph: engine.latent.run_tile over the torch networks (the start
    noise, for one-step LCMSR, is an input)."""

    def __init__(self, method: Method, spec: MethodSpec, nets: dict, inputs: tuple[str, ...]):
        super().__init__()
        self.method, self.spec, self.inputs, self.roles = method, spec, inputs, tuple(nets)
        for role, net in nets.items():
            self.add_module(role, net)

    def forward(self, *args):
        a = dict(zip(self.inputs, args))
        noise = a.pop("noise", None)
        nets = TorchNetworks({role: getattr(self, role) for role in self.roles}, torch.device("cpu"))
        return run_tile(nets, self.method, self.spec, 1, a, lambda k: noise)


def graph_specs(card: Card, nets: dict) -> dict:
    """key -> (module, input names, output name, networks) of every graph the bundle's methods need;
    the modules are the networks ``nets`` themselves or their composition by engine.latent, and the
    input names those of engine.models.inputs, in the order of the networks' forward."""
    decoder = card.decoder
    specs = {decoder: (nets[decoder], DecoderInputs._fields, "sr", [decoder])}
    for name, spec in card.methods.items():
        cond = spec.condition
        specs[cond] = (nets[cond], ConditionInputs._fields, "cond", [cond])
        if spec.denoiser is not None:
            den = spec.denoiser
            specs[den] = (nets[den], DenoiserInputs._fields, "out", [den])
        method = REGISTRY[name]
        if method.fused_graph:
            problem = method.fused_problem(spec) if method.fused_problem else None
            if problem:
                raise TrainingError(problem)
            inputs = fused_inputs(method.fused_inputs)
            used = roles(card, spec)
            specs[method.fused_graph] = (Fused(method, spec, {role: nets[net] for role, net in used.items()}, inputs),
                                         inputs, "sr", list(used.values()))
    return specs


def example_inputs(card: Card, names, batch: int, h: int, w: int, scale: float, seed: int, features: int = 0) -> dict:
    """Random inputs of a tile (numpy), with the tables of its grid; a denoiser's condition has
    ``features`` channels beside the latent."""
    rng = np.random.default_rng(seed)
    multiple = max([unet_multiple(net.config["channels"]) for net in card.networks.values()
                    if net.kind == "denoiser"], default=1)
    plan = Plan.build(h, w, Grid.whole(h, w, scale), multiple)
    latent = (batch, card.latent, *plan.latent_shape)
    arrays = dict(plan.arrays(), lr=rng.random((batch, card.bands, h, w), dtype=np.float32),
                  inv_scale=np.full((batch, 1), 1.0 / scale, dtype=np.float32),
                  t_frac=rng.random((batch, 1), dtype=np.float32))
    for name in ("z", "noise", "z_t"):
        arrays[name] = rng.standard_normal(latent, dtype=np.float32)
    arrays["cond"] = rng.standard_normal((batch, latent[1] + features, *latent[2:]), dtype=np.float32)
    return {name: arrays[name] for name in names}


def condition_features(module: nn.Module) -> int:
    """The LR feature channels a denoiser's condition carries (0 for the other graphs)."""
    return int(getattr(module, "config", {}).get("features", 0))


def dynamic_axes(names, output: str) -> dict:
    axes = {}
    for name in (*names, output):
        key = name.rsplit("_", 1)[0] if name.endswith(("_idx", "_w")) else name
        axes[name] = AXES.get(key, LATENT_AXES)
    return axes


def externalise(model: onnx.ModelProto, keys: dict, tensors: dict, offsets: dict) -> set:
    """Point the initializers that are bundle parameters into model.safetensors, renamed to their bundle
    keys (``keys``: exported name -> bundle key); returns the bundle keys."""
    renamed = {}
    for init in model.graph.initializer:
        key = keys.get(init.name)
        if key is None:
            continue
        if not np.array_equal(onnx.numpy_helper.to_array(init), tensors[key].numpy()):
            raise TrainingError(f"the exported {init.name} differs from the bundle's {key}")
        renamed[init.name] = key
        init.name = key
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        offset, length = offsets[key]
        for k, v in (("location", modelfile.WEIGHTS), ("offset", str(offset)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = k, v
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    return set(renamed.values())


def export_graph(key: str, module: nn.Module, names, output: str, networks: list[str], nets: dict, card: Card,
                 tensors: dict, offsets: dict) -> tuple[bytes, dict]:
    """The bytes of ``<key>.onnx`` (made in memory: nothing is written) and its card entry."""
    module.eval()
    inputs = example_inputs(card, names, 1, 23, 17, 2.5, seed=0, features=condition_features(module))
    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter is deprecated
        warnings.filterwarnings("ignore", message="Constant folding")  # slicing the condition; folding is off anyway
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET, input_names=list(names),
                          output_names=[output], dynamic_axes=dynamic_axes(names, output), do_constant_folding=False)
    model = onnx.load_from_string(buffer.getvalue())
    by_param = {id(p): f"{net}.{name}" for net in networks for name, p in nets[net].named_parameters()}
    keys = {name: by_param[id(p)] for name, p in module.named_parameters() if id(p) in by_param}
    used = externalise(model, keys, tensors, offsets)
    expected = {k for k in tensors if any(k.startswith(net + ".") for net in networks)}
    if used != expected:
        raise TrainingError(f"graph {key} does not use every parameter of {', '.join(networks)}: "
                           f"{sorted(expected - used)[:3]}")
    card_meta = {k: v for k, v in card.to_json().items() if k != "onnx"}
    for k, v in (("latentsr.card", json.dumps(card_meta)), ("latentsr.graph", key),
                 ("latentsr.networks", ",".join(networks))):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    data = model.SerializeToString()
    return data, {"file": f"{key}.onnx", "sha256": modelfile.sha256(data), "networks": networks,
                  "inputs": list(names), "output": output}


def check_graph(key: str, module: nn.Module, entry: GraphEntry, card: Card, sessions) -> float:
    """Max abs difference between the exported graph (run by the engine) and ``module`` at another tile
    size, scale and batch."""
    names = entry.inputs
    inputs = example_inputs(card, names, 2, 19, 29, 3.7, seed=1, features=condition_features(module))
    with torch.no_grad():
        ref = module(*(torch.from_numpy(inputs[n]) for n in names)).numpy()
    out = sessions.graph(key)(**inputs)
    if out.shape != ref.shape:
        raise TrainingError(f"the ONNX graph {key} gives shape {out.shape}, torch {ref.shape}")
    return float(np.abs(out - ref).max())


@contextlib.contextmanager
def stoppable():
    """SIGTERM stops the export as Ctrl-C (SIGINT) does: a KeyboardInterrupt (main thread only,
    where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def export(model: str | None = None) -> Path:
    """Export the ONNX graphs of the bundle ``model`` (name or folder) into its folder; returns the folder.
    The graphs are made in memory and written together with the card (SIGINT and SIGTERM wait for that
    moment): stopped before it, the folder is as it was; stopped after, it holds the new graphs, unchecked.
    Every file written or removed is a member of the folder (engine.modelfile.member)."""
    folder = modelfile.resolve(model)
    written = []
    try:
        with stoppable():
            check(folder, *write_graphs(folder, written))
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        if written:
            raise TrainingError(f"the ONNX export was stopped ({name}) after it wrote the new graphs into {folder}, "
                                f"before it checked them: run it again to check them") from None
        raise TrainingError(f"the ONNX export was stopped ({name}); nothing in {folder} was changed") from None
    return folder


def write_graphs(folder: Path, written: list) -> tuple[Card, dict, dict]:
    """Export and write the graphs of the bundle in ``folder`` with its new card (``written`` gets an
    entry once they are); its card, tensors and graph entries."""
    card, tensors = modelfile.load(str(folder))
    weights = modelfile.read_weights(folder, modelfile.WEIGHTS, "weights.file", card.weights.sha256)
    offsets = {name: entry[2:] for name, entry in modelfile.safetensors_index(weights).items()}
    nets = modelfile.build_networks(card, tensors, list(card.networks), "cpu")
    specs = graph_specs(card, nets)
    old = card.onnx.graphs if card.onnx else {}
    made = {key: export_graph(key, module, names, output, networks, nets, card, tensors, offsets)
            for key, (module, names, output, networks) in specs.items()}
    card = card.updated(onnx={"opset": OPSET, "weights_sha256": card.weights.sha256,
                              "graphs": {key: entry for key, (_, entry) in made.items()}})
    graphs = card.onnx.graphs
    with deferred_interrupts() as hits:  # a stop waits until the graphs and the card are written
        for key, (data, entry) in made.items():
            modelfile.write_member(folder, entry["file"], f"onnx.graphs.{key}.file", data)
        modelfile.write_card(folder, card)
        for key, entry in old.items():
            if entry.file not in {g.file for g in graphs.values()}:
                path = modelfile.member(folder, entry.file, f"onnx.graphs.{key}.file")
                try:
                    path.unlink(missing_ok=True)
                except OSError as e:
                    log.warning("cannot remove the old graph %s: %s", path, e.strerror)
        written.append(folder)
    if hits:
        raise KeyboardInterrupt(signal.Signals(hits[0]).name)
    return card, tensors, graphs


def check(folder: Path, card: Card, tensors: dict, graphs: dict) -> None:
    """Check the written graphs against the networks built anew from the bundle."""
    sessions = Sessions(folder, card, "cpu")
    # the reference: the networks built anew from the bundle, composed as the engine composes them
    reference = graph_specs(card, modelfile.build_networks(card, tensors, list(card.networks), "cpu"))
    for key, (module, *_rest) in reference.items():
        diff = check_graph(key, module, graphs[key], card, sessions)
        if diff > TOLERANCE:
            raise TrainingError(f"the ONNX graph {key} differs from the bundle's torch networks by {diff:.3g} "
                                f"at another tile size and scale")
        log.info("  %-24s %7.1f kB  max |onnx - torch| %.1e", graphs[key].file,
                 (folder / graphs[key].file).stat().st_size / 1024, diff)
    log.info("wrote %d ONNX graphs into %s", len(graphs), folder)
