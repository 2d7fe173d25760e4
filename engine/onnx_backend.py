"""ONNX Runtime backend: the learned methods with numpy and onnxruntime only (torch is never imported).

``python -m training export-onnx`` writes the inference graphs beside the bundle's weights:

- ``regression.onnx``: LR in, SR out (conditioning net and decoder);
- ``lcmsr.onestep.onnx``: LR and noise in, SR out (one-step LCMSR);
- per diffusion method, ``<method>.condition.onnx`` and ``<method>.denoiser.onnx``, and
  ``decoder.onnx``: engine.latent composes them for the N-step samplers.

This module implements engine.latent.Networks over those graphs; the rest of a method is engine.latent.

The graphs hold no network weights. Every parameter is an external initializer named as in
model.safetensors and stored there, so the weights exist once and both backends use the same numbers.
The card's ``onnx`` entry names each graph's file, SHA-256 and networks, and the weights' SHA-256 the
graphs were exported against. Before a session is made, the graph's bytes and the weights' bytes are
checked against the card; the weights are read with numpy from those verified bytes and handed to ONNX
Runtime, which therefore loads nothing that was not verified. A graph's files are the card's, read through
engine.modelfile (inside the model folder, regular files, bounded in size). A graph runs only when its
inputs are those the card lists and the engine gives, and when the configs of its networks are those it
was exported with (the card it carries): a card edited afterwards is refused before anything runs.

Sessions use every CPU core and full graph optimisation, run on CUDAExecutionProvider when the device
allows it and it starts (else CPU), and are made once per method object, so all tiles reuse them.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import modelfile
from .card import Card, MethodSpec
from .card import Graph as GraphEntry
from .errors import LatentSRError
from .models.inputs import ConditionInputs, DecoderInputs, DenoiserInputs
from .registry import Method

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
ORT_DEFAULT_LOG_SEVERITY = 2  # warnings
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}
INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
# A one-node graph (y = Identity(x), float[1], opset 13), as onnx.helper serialises it: enough for
# ONNX Runtime to show whether a CUDA session really starts.
PROBE_GRAPH = (b"\x08\x08\x12\x00:7\n\x10\n\x01x\x12\x01y\"\x08Identity\x12\x01pZ\x0f\n\x01x\x12\n\n\x08\x08\x01"
               b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r")


def export_hint(folder: Path) -> str:
    ref = folder.name if folder.parent == modelfile.MODELS_DIR else str(folder)
    return f"run `python -m training export-onnx --model {ref}`"


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays (copies, aligned and writable)."""
    try:
        tensors = {}
        for name, (kind, shape, offset, length) in modelfile.safetensors_index(data).items():
            dtype = np.dtype(SAFETENSORS_DTYPES[kind])
            tensors[name] = np.frombuffer(data, dtype, count=length // dtype.itemsize, offset=offset).reshape(shape).copy()
        return tensors
    except (ValueError, KeyError, TypeError) as e:
        raise LatentSRError(f"cannot read the model weights: {e}") from None


def verified_graph(folder: Path, key: str, entry: GraphEntry) -> bytes:
    """The bytes of the card's graph ``key`` (entry ``entry``), checked against its SHA-256."""
    hint = export_hint(folder)
    data = modelfile.read_member(folder, entry.file, f"onnx.graphs.{key}.file", "ONNX graph", modelfile.GRAPH_LIMIT,
                                 hint)
    if modelfile.sha256(data) != entry.sha256:
        raise LatentSRError(f"the ONNX graph {folder / entry.file} does not match the SHA-256 in the model card: "
                            f"the file is damaged or was changed: {hint}")
    return data


def exported_with(session, card: Card, networks, folder: Path, file: str) -> None:
    """A LatentSRError naming the field unless each of ``networks`` has, in ``card``, the kind and
    config that the graph (its ``latentsr.card`` metadata) was exported with. The card in the graph is
    compared as JSON, as written: a graph holding another card, or none, differs."""
    hint = export_hint(folder)
    text = session.get_modelmeta().custom_metadata_map.get("latentsr.card")
    if text is None:
        raise LatentSRError(f"the ONNX graph {file} carries no model card (it was not written by LatentSR's "
                            f"export): {hint}")
    exported = modelfile.parse_json(text, f"the model card in the ONNX graph {file}")
    written = exported["networks"] if isinstance(exported, dict) and isinstance(exported.get("networks"), dict) else {}
    for net in networks:
        now = card.networks[net].to_json() if net in card.networks else {}
        then = written[net] if isinstance(written.get(net), dict) else {}
        for key in sorted(set(now) | set(then)):
            a, b = now.get(key), then.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                field = next((f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
            else:
                field = key if a != b else None
            if field:
                raise LatentSRError(f"'networks.{net}.{field}' in the model card {folder / modelfile.CARD} differs from "
                                    f"the one the ONNX graph {file} was exported with: {hint}")


def cuda_works() -> bool:
    """Whether ONNX Runtime really starts a CUDA session here (listing the provider is not enough:
    onnxruntime-gpu lists it without a GPU or without the CUDA libraries, then falls back to the CPU)."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)  # the failed start would log an error before the fallback
    try:
        session = ort.InferenceSession(PROBE_GRAPH, providers=[CUDA, CPU])
        return session.get_providers()[0] == CUDA
    except Exception:  # noqa: BLE001 - onnxruntime raises its own types; any failure means no CUDA
        return False
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)


def providers_for(device: str, available: list[str]) -> list[str]:
    if device == "cpu":
        return [CPU]
    if device not in ("auto", "cuda"):
        raise LatentSRError(f"unknown device '{device}': choose one of auto, cpu, cuda")
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise LatentSRError("device 'cuda' was requested but backend onnx (ONNX Runtime) has no CUDA provider: "
                            "install onnxruntime-gpu, or use device cpu or auto")
    return [CPU]


@dataclass
class Graph:
    """One ONNX Runtime session; called with named numpy arrays, returns its first output. ``listed``:
    the inputs the card lists for it; any other input, or one of a type the engine does not give, is refused."""

    session: object
    weights: list = field(repr=False)  # the OrtValues the session's initializers point to: keep them alive
    file: str  # the graph's file name, for messages
    listed: tuple  # the inputs the card lists for it

    def __post_init__(self):
        self.inputs = {}
        for i in self.session.get_inputs():
            if i.name not in self.listed or i.type not in INPUT_DTYPES:
                what = "that the model card does not list" if i.name not in self.listed else f"of type {i.type}"
                raise LatentSRError(f"the ONNX graph {self.file} has an input '{i.name}' {what}: "
                                    f"it is not a graph LatentSR can run")
            self.inputs[i.name] = INPUT_DTYPES[i.type]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __call__(self, **arrays) -> np.ndarray:
        missing = [name for name in self.inputs if name not in arrays]
        if missing:
            raise LatentSRError(f"the ONNX graph {self.file} asks for an input '{missing[0]}' that LatentSR does not give")
        feed = {name: np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in self.inputs.items()}
        try:
            return self.session.run(None, feed)[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise LatentSRError(f"ONNX Runtime failed running {self.file}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def default_threads() -> int:
    """OMP_NUM_THREADS when set (as a Dask worker's nanny sets it, to share the cores), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


class Sessions:
    """Makes the sessions of one bundle: verified graphs, verified weights, one provider choice."""

    def __init__(self, folder: Path, card: Card, device: str, threads: int | None = None):
        import onnxruntime as ort

        self.ort, self.folder, self.card = ort, folder, card
        self.onnx = card.onnx
        if self.onnx.weights_sha256 != card.weights.sha256:
            raise LatentSRError(f"the ONNX graphs of the model '{card.name}' were exported from other "
                                f"weights: {export_hint(folder)}")
        weights = modelfile.read_weights(folder, modelfile.WEIGHTS, "weights.file", card.weights.sha256,
                                         hint="reinstall the model")
        self.tensors = read_safetensors(weights)
        self.providers = providers_for(device, ort.get_available_providers())
        self.device = device
        self.threads = threads or default_threads()

    def options(self):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The arena keeps a tile's buffers for the next tile: without it every tensor above the mmap
        # threshold (engine.allocator) is mapped and faulted in anew, which took up to half the wall
        # time in the kernel while other jobs loaded the machine (the same time on a quiet one). The
        # memory pattern (a block planned per run) is off: beside the arena it added 0.6 GB of peak
        # RSS (docs/MODELS.md, "Sessions").
        so.enable_cpu_mem_arena = True
        so.enable_mem_pattern = False
        so.log_severity_level = 4  # fatal only: a failure is reported once, as one line (Graph)
        return so

    def graph(self, key: str) -> Graph:
        if key not in self.onnx.graphs:
            raise LatentSRError(f"the model '{self.card.name}' has no ONNX graph '{key}': "
                                f"{export_hint(self.folder)}")
        entry = self.onnx.graphs[key]
        data = verified_graph(self.folder, key, entry)
        so = self.options()
        names = sorted(k for k in self.tensors if any(k.startswith(net + ".") for net in entry.networks))
        values = [self.ort.OrtValue.ortvalue_from_numpy(self.tensors[k]) for k in names]
        so.add_external_initializers(names, values)
        quiet = CUDA in self.providers
        if quiet:  # a CUDA provider that cannot start logs its failure as an error before falling back to CPU
            self.ort.set_default_logger_severity(4)
        try:
            session = self.ort.InferenceSession(data, so, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise LatentSRError(f"ONNX Runtime cannot load {entry.file}: {str(e).strip().splitlines()[0]}") from None
        finally:
            if quiet:
                self.ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)
        exported_with(session, self.card, entry.networks, self.folder, entry.file)
        graph = Graph(session, values, entry.file, entry.inputs)
        if CUDA in self.providers and graph.provider != CUDA:
            if self.device == "cuda":
                raise LatentSRError("device 'cuda' was requested but backend onnx (ONNX Runtime) cannot start CUDA here "
                                    "(no GPU, or CUDA/cuDNN libraries missing): use device cpu or auto")
            log.info("ONNX Runtime's CUDA provider cannot start here: running on the CPU")
            self.providers = [CPU]
        return graph


class OnnxNetworks:
    """A method's graphs (engine.latent.Networks): the single-call graph of the method when it has one
    (``fused``), else its condition, denoiser and decoder graphs, each fed its named inputs
    (engine.models.inputs: the graph's input names)."""

    backend = "onnx"
    precision = "float32"  # the only one it runs (engine.precision)

    def __init__(self, graphs: dict, method: Method):
        self.graphs = graphs
        self.fused = None
        if "fused" in graphs:
            start = "noise" in method.fused_inputs  # a one-step sampler's graph takes the start noise

            def fused(a, noise):
                return graphs["fused"](**a, **({"noise": noise(0)} if start else {}))

            self.fused = fused

    @property
    def provider(self) -> str:
        return next(iter(self.graphs.values())).provider

    @property
    def where(self) -> str:
        return f"backend onnx on {self.provider}, {self.precision}"

    def array(self, x: np.ndarray) -> np.ndarray:
        return x

    def numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def running(self):
        return contextlib.nullcontext()

    def condition(self, inputs: ConditionInputs) -> np.ndarray:
        return self.graphs["condition"](**inputs._asdict())

    def denoiser(self, inputs: DenoiserInputs) -> np.ndarray:
        return self.graphs["denoiser"](**inputs._asdict())

    def decoder(self, inputs: DecoderInputs) -> np.ndarray:
        return self.graphs["decoder"](**inputs._asdict())


def require(name: str, backend: str) -> None:
    """A LatentSRError when onnxruntime cannot be imported (``backend``: what the user asked for)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend == "onnx":
            raise LatentSRError("backend 'onnx' needs onnxruntime, which is not installed: install onnxruntime "
                                "(or onnxruntime-gpu), or use backend torch") from None
        raise LatentSRError(f"method '{name}' needs ONNX Runtime or PyTorch, and neither is installed: "
                            f"install onnxruntime, or use bicubic") from None


def require_graphs(card: Card, folder: Path) -> None:
    if card.onnx is None:
        raise LatentSRError(f"the model '{card.name}' has no ONNX graphs: {export_hint(folder)}")


def networks(method: Method, folder: Path, card: Card, spec: MethodSpec, device: str, threads: int | None = None,
             fused: bool = False) -> OnnxNetworks:
    """The graphs of ``method`` (engine.registry; card entry ``spec``) of the bundle in ``folder``, with
    ``threads`` intra-op threads (default: default_threads()). ``fused``: the method's single-call graph
    computes the run (Method.fuses), else its condition, denoiser and decoder graphs do."""
    sessions = Sessions(folder, card, device, threads)
    if fused:
        graphs = {"fused": sessions.graph(method.fused_graph)}
    else:
        graphs = {"condition": sessions.graph(spec.condition), "denoiser": sessions.graph(spec.denoiser),
                  "decoder": sessions.graph(card.decoder)}
    return OnnxNetworks(graphs, method)
