"""ONNX export of a bundle's inference graphs (python -m training export-onnx [--model NAME_OR_DIR]).

Writes into the bundle folder (see engine/onnx_backend.py for how the engine runs them):

- ``regression.onnx``: lr, inv_scale, tables -> sr (conditioning net + decoder);
- ``lcmsr.onestep.onnx``: lr, noise, inv_scale, tables -> sr (z0 = f(noise, T), then the decoder);
- ``<method>.condition.onnx``: lr, inv_scale, hr tables -> cond;
- ``<method>.denoiser.onnx``: z_t, cond, t_frac, inv_scale -> out (ε for E²DiffSR, F for LCMSR);
- ``decoder.onnx``: lr, z, inv_scale, out and lat tables -> sr.

Tile height and width, the batch (band groups) and the latent size are dynamic; the scale enters only as
inv_scale and through the index/weight tables of engine.models.sampling, so one graph serves every
scale. The graphs compute the same function as the torch networks, laid out for ONNX Runtime's CPU
kernels: the decoder's pyramid runs channels-last (each level's 1×1 head and pixel shuffle is one
broadcast MatMul whose result already is the shuffled map, and gathers move whole pixels, not single
floats), and upsampling gathers do the columns first, on the smaller side.

Weights: every network parameter becomes an external initializer named as in model.safetensors and
pointing into it, so the graph files hold only structure and small constants. The model card (without
its ``onnx`` entry) is in each graph's metadata_props; the card's ``onnx`` entry gets each graph's file,
SHA-256 and networks. Each graph is checked against torch at another tile size, scale and batch.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from engine import modelfile
from engine.grid import Grid
from engine.models.layers import resample
from engine.models.sampling import LATENT_FACTOR, LEVELS, Plan
from engine.schedulers import consistency

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4  # max abs difference to torch at the check size, normalised units
TABLES = {"hr": ("hr_y_idx", "hr_y_w", "hr_x_idx", "hr_x_w"),
          "out": ("out_y_idx", "out_y_w", "out_x_idx", "out_x_w"),
          "lat": ("lat_y_idx", "lat_y_w", "lat_x_idx", "lat_x_w")}
AXES = {"lr": {0: "batch", 2: "height", 3: "width"}, "inv_scale": {0: "batch"}, "t_frac": {0: "batch"},
        "out_y": {1: "out_height"}, "out_x": {1: "out_width"}, "lat_y": {1: "height"}, "lat_x": {1: "width"},
        "hr_y": {1: "hr_height"}, "hr_x": {1: "hr_width"}, "sr": {0: "batch", 2: "out_height", 3: "out_width"}}
LATENT_AXES = {0: "batch", 2: "latent_height", 3: "latent_width"}


def gather(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ_k w[k]·x.index_select(dim, idx[k]) along any dim (engine.models.layers.resample, any layout)."""
    shape = [1] * x.dim()
    shape[dim] = -1
    out = x.index_select(dim, idx[0]) * w[0].reshape(shape)
    for k in range(1, idx.shape[0]):
        out = out + x.index_select(dim, idx[k]) * w[k].reshape(shape)
    return out


def upsample2d(x, y_idx, y_w, x_idx, x_w) -> torch.Tensor:
    """layers.resample2d with the columns first (NCHW): the element-wise column gather then runs on the
    smaller, not yet upsampled rows."""
    return resample(resample(x, x_idx, x_w, 3), y_idx, y_w, 2)


class DecoderGraph(nn.Module):
    """engine.models.decoder.Decoder.forward, laid out for ONNX Runtime."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, lr, z, inv_scale, out_y_idx, out_y_w, out_x_idx, out_x_w, lat_y_idx, lat_y_w, lat_x_idx, lat_x_w):
        d = self.net
        emb = d.scale_emb(inv_scale)
        guide = upsample2d(d.guide(z), lat_y_idx, lat_y_w, lat_x_idx, lat_x_w)
        feat = d.head(lr)
        x = feat
        for block in d.blocks:
            x = block(x, guide, emb)
        x = d.body_out(x) + feat
        c = d.up_channels
        mix = torch.softmax(d.mix(emb).reshape(-1, len(LEVELS), c), dim=1)
        xt = x.permute(0, 2, 3, 1).unsqueeze(2)  # (B, h, 1, w, ch)
        acc = None
        for i, (k, head) in enumerate(zip(LEVELS, d.levels)):
            ch = head.weight.shape[1]
            # head channel c·k²+sy·k+sx (pixel_shuffle's order) -> weight [sy, ch, sx·C + c]
            weight = head.weight.reshape(c, k, k, ch).permute(1, 3, 2, 0).reshape(k, ch, k * c)
            bias = head.bias.reshape(c, k, k).permute(1, 2, 0).reshape(k, 1, k * c)
            p = torch.matmul(xt, weight) + bias  # (B, h, k, w, k·C): the shuffled map, channels last
            p = p.flatten(1, 2).unflatten(3, (k, c)).flatten(2, 3)  # (B, h·k, w·k, C)
            rows = slice(2 * i, 2 * i + 2)
            p = gather(gather(p, out_y_idx[rows], out_y_w[rows], 1), out_x_idx[rows], out_x_w[rows], 2)
            p = p * mix[:, i, None, None, :]
            acc = p if acc is None else acc + p
        t0, t2 = d.tail[0], d.tail[2]
        out = F.linear(F.silu(F.linear(acc, t0.weight.flatten(1), t0.bias)), t2.weight.flatten(1), t2.bias)
        cubic = slice(2 * len(LEVELS), 2 * len(LEVELS) + 4)
        skip = upsample2d(lr, out_y_idx[cubic], out_y_w[cubic], out_x_idx[cubic], out_x_w[cubic])
        return skip + out.permute(0, 3, 1, 2)


class ConditionGraph(nn.Module):
    """engine.models.condition.ConditionNet.forward, its upsampling columns first."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, lr, inv_scale, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w):
        c = self.net
        x = c.head(F.pixel_unshuffle(upsample2d(lr, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w), LATENT_FACTOR))
        emb = c.scale_emb(inv_scale)
        for block in c.blocks:
            x = block(x, emb)
        return c.out(F.silu(x))


class RegressionGraph(nn.Module):
    """sr = decoder(lr, condition(lr) / latent_scale)."""

    def __init__(self, condition, decoder, latent_scale: float):
        super().__init__()
        self.condition, self.decoder, self.latent_scale = ConditionGraph(condition), DecoderGraph(decoder), latent_scale

    def forward(self, lr, inv_scale, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w, out_y_idx, out_y_w, out_x_idx, out_x_w,
                lat_y_idx, lat_y_w, lat_x_idx, lat_x_w):
        cond = self.condition(lr, inv_scale, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w)
        return self.decoder(lr, cond / self.latent_scale, inv_scale, out_y_idx, out_y_w, out_x_idx, out_x_w,
                            lat_y_idx, lat_y_w, lat_x_idx, lat_x_w)


class OneStepGraph(nn.Module):
    """One-step LCMSR: z_T = noise (ᾱ(T) = 0), z0 = c_skip(T)·z_T + c_out(T)·F(z_T, T), then the decoder."""

    def __init__(self, condition, denoiser, decoder, spec: dict):
        super().__init__()
        self.condition, self.denoiser, self.decoder = ConditionGraph(condition), denoiser, DecoderGraph(decoder)
        total, sigma_data = spec.get("T", consistency.T), spec.get("sigma_data", consistency.SIGMA_DATA)
        a, b = consistency.noise_coefficients(total, total)
        if float(a) != 0.0 or float(b) != 1.0:
            raise ValueError("one-step LCMSR expects pure noise at t = T")
        self.c_skip = float(consistency.c_skip(total, total, sigma_data))
        self.c_out = float(consistency.c_out(total, total, sigma_data))
        self.latent_scale = float(spec.get("latent_scale", 1.0))

    def forward(self, lr, noise, inv_scale, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w, out_y_idx, out_y_w, out_x_idx, out_x_w,
                lat_y_idx, lat_y_w, lat_x_idx, lat_x_w):
        cond = self.condition(lr, inv_scale, hr_y_idx, hr_y_w, hr_x_idx, hr_x_w)
        f_out = self.denoiser(noise, cond, torch.ones_like(inv_scale), inv_scale)
        x0 = self.c_skip * noise + self.c_out * f_out
        return self.decoder(lr, x0 / self.latent_scale, inv_scale, out_y_idx, out_y_w, out_x_idx, out_x_w,
                            lat_y_idx, lat_y_w, lat_x_idx, lat_x_w)


def graph_specs(card: dict, nets: dict) -> dict:
    """key -> (module, input names, output name, networks) of every graph the bundle's methods need."""
    decoder = card.get("decoder", "decoder")
    specs = {decoder: (DecoderGraph(nets[decoder]), ("lr", "z", "inv_scale", *TABLES["out"], *TABLES["lat"]), "sr",
                       [decoder])}
    for name, spec in card["methods"].items():
        cond = spec["condition"]
        specs[cond] = (ConditionGraph(nets[cond]), ("lr", "inv_scale", *TABLES["hr"]), "cond", [cond])
        if name == "regression":
            specs["regression"] = (RegressionGraph(nets[cond], nets[decoder], float(spec.get("latent_scale", 1.0))),
                                   ("lr", "inv_scale", *TABLES["hr"], *TABLES["out"], *TABLES["lat"]), "sr",
                                   [cond, decoder])
            continue
        den = spec["denoiser"]
        specs[den] = (nets[den], ("z_t", "cond", "t_frac", "inv_scale"), "out", [den])
        if name == "lcmsr":
            specs["lcmsr.onestep"] = (OneStepGraph(nets[cond], nets[den], nets[decoder], spec),
                                      ("lr", "noise", "inv_scale", *TABLES["hr"], *TABLES["out"], *TABLES["lat"]),
                                      "sr", [cond, den, decoder])
    return specs


def example_inputs(card: dict, names, batch: int, h: int, w: int, scale: float, seed: int) -> dict:
    """Random inputs of a tile (numpy), with the tables of its grid."""
    rng = np.random.default_rng(seed)
    multiple = max([2 ** (len(net["config"]["channels"]) - 1) for net in card["networks"].values()
                    if net["kind"] == "denoiser"], default=1)
    plan = Plan.build(h, w, Grid.whole(h, w, scale), multiple)
    latent = (batch, int(card.get("latent", 4)), *plan.latent_shape)
    arrays = dict(plan.arrays(), lr=rng.random((batch, int(card["bands"]), h, w), dtype=np.float32),
                  inv_scale=np.full((batch, 1), 1.0 / scale, dtype=np.float32),
                  t_frac=rng.random((batch, 1), dtype=np.float32))
    for name in ("z", "noise", "z_t", "cond"):
        arrays[name] = rng.standard_normal(latent, dtype=np.float32)
    return {name: arrays[name] for name in names}


def dynamic_axes(names, output: str) -> dict:
    axes = {}
    for name in (*names, output):
        key = name.rsplit("_", 1)[0] if name.endswith(("_idx", "_w")) else name
        axes[name] = AXES.get(key, LATENT_AXES)
    return axes


def safetensors_offsets(data: bytes) -> dict:
    """name -> (absolute offset, length) of each tensor in a safetensors file."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    return {name: (8 + size + info["data_offsets"][0], info["data_offsets"][1] - info["data_offsets"][0])
            for name, info in header.items() if name != "__metadata__"}


def externalise(model: onnx.ModelProto, keys: dict, tensors: dict, offsets: dict) -> set:
    """Point the initializers that are bundle parameters into model.safetensors, renamed to their bundle
    keys (``keys``: exported name -> bundle key); returns the bundle keys."""
    renamed = {}
    for init in model.graph.initializer:
        key = keys.get(init.name)
        if key is None:
            continue
        if not np.array_equal(onnx.numpy_helper.to_array(init), tensors[key].numpy()):
            raise RuntimeError(f"the exported {init.name} differs from the bundle's {key}")
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


def export_graph(key: str, module: nn.Module, names, output: str, networks: list[str], nets: dict, card: dict,
                 tensors: dict, offsets: dict, folder: Path) -> dict:
    """Write ``<key>.onnx``; its card entry."""
    module.eval()
    inputs = example_inputs(card, names, 1, 23, 17, 2.5, seed=0)
    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    path = folder / f"{key}.onnx"
    tmp = folder / f"{key}.onnx.tmp"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter is deprecated
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET, input_names=list(names),
                          output_names=[output], dynamic_axes=dynamic_axes(names, output), do_constant_folding=False)
    model = onnx.load(str(tmp))
    by_param = {id(p): f"{net}.{name}" for net in networks for name, p in nets[net].named_parameters()}
    keys = {name: by_param[id(p)] for name, p in module.named_parameters() if id(p) in by_param}
    used = externalise(model, keys, tensors, offsets)
    expected = {k for k in tensors if any(k.startswith(net + ".") for net in networks)}
    if used != expected:
        raise RuntimeError(f"graph {key} does not use every parameter of {', '.join(networks)}: "
                           f"{sorted(expected - used)[:3]}")
    card_meta = {k: v for k, v in card.items() if k != "onnx"}
    for k, v in (("latentsr.card", json.dumps(card_meta)), ("latentsr.graph", key),
                 ("latentsr.networks", ",".join(networks))):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    data = model.SerializeToString()
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return {"file": path.name, "sha256": modelfile.sha256(data), "networks": networks,
            "inputs": list(names), "output": output}


def check_graph(key: str, module: nn.Module, entry: dict, card: dict, sessions) -> float:
    """Max abs difference between the exported graph (via the engine) and torch at another size, scale and batch."""
    names = entry["inputs"]
    inputs = example_inputs(card, names, 2, 19, 29, 3.7, seed=1)
    with torch.no_grad():
        ref = module(*(torch.from_numpy(inputs[n]) for n in names)).numpy()
    out = sessions.graph(key)(**inputs)
    if out.shape != ref.shape:
        raise RuntimeError(f"graph {key} gives shape {out.shape}, torch {ref.shape}")
    return float(np.abs(out - ref).max())


def write_card(folder: Path, card: dict) -> None:
    tmp = folder / (modelfile.CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / modelfile.CARD)


def export(model: str | None = None) -> Path:
    """Export the ONNX graphs of the bundle ``model`` (name or folder) into its folder; returns the folder."""
    from engine.onnx_backend import Sessions

    folder = modelfile.resolve(model)
    card, tensors = modelfile.load(str(folder))
    offsets = safetensors_offsets((folder / modelfile.WEIGHTS).read_bytes())
    nets = modelfile.build_networks(card, tensors, list(card["networks"]), "cpu")
    specs = graph_specs(card, nets)
    old = (card.get("onnx") or {}).get("graphs", {})
    graphs = {key: export_graph(key, module, names, output, networks, nets, card, tensors, offsets, folder)
              for key, (module, names, output, networks) in specs.items()}
    card["onnx"] = {"opset": OPSET, "weights_sha256": card["weights"]["sha256"], "graphs": graphs}
    write_card(folder, card)
    for entry in old.values():
        if entry["file"] not in {g["file"] for g in graphs.values()}:
            (folder / entry["file"]).unlink(missing_ok=True)
    sessions = Sessions(folder, card, "cpu")
    for key, (module, *_rest) in specs.items():
        diff = check_graph(key, module, graphs[key], card, sessions)
        if diff > TOLERANCE:
            raise RuntimeError(f"graph {key} differs from torch by {diff:.3g} at another tile size and scale")
        log.info("  %-24s %7.1f kB  max |onnx - torch| %.1e", graphs[key]["file"],
                 (folder / graphs[key]["file"]).stat().st_size / 1024, diff)
    log.info("wrote %d ONNX graphs into %s", len(graphs), folder)
    return folder
