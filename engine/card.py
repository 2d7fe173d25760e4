"""The model card (a bundle's model.json) as one typed, frozen value, parsed, checked and defaulted once.

``parse`` turns the card's JSON into a ``Card``: every check of its values (format and version, bands and
latent, networks and their configs' bounds, the file entries, the methods, their networks and their step
bounds) runs there, each refusal one line naming the field, and every field the engine reads gets its
default there and nowhere else. The engine and training read the typed fields, not the JSON.

Defaults: a card without a field was written before the field existed, so each default is what such a
card meant: ``latent`` is the decoder's own latent width, ``decoder`` the network named "decoder", E²DiffSR
ε-prediction with η = 1 (a stage-2 run writes both: z0 with η = 0), the schedulers' T and σ_data, the
registry's steps and detail (engine.registry), a latent_scale of 1.

Writing: training builds a card's JSON and parses it (``parse``, ``Card.updated``) before writing
``to_json()``, so a writer cannot write what the reader refuses. ``to_json`` gives back the JSON the
card was parsed from, key for key in its order: the fields the engine does not read (training, metrics,
normalisation...) are kept as written, and a defaulted field is not written.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .errors import LatentSRError
from .models import KINDS, LATENT
from .reach import SAMPLE_EDGE_CELLS
from .registry import LEARNED, REGISTRY
from .schedulers import consistency, ddpm

FORMAT = "latentsr-model"
VERSION = 1
WEIGHTS = "model.safetensors"
DECODER = "decoder"  # the decoder's network when the card does not name it
CONFIG_LIMIT = 4096  # the largest whole number in a network's config (widths, blocks): the shipped model has 128
CONFIG_LIST_LIMIT = 16  # the longest list in a network's config (levels): the shipped model has 3
EDGE_LIMIT = 64  # the widest edge of a sampled latent a card may record, in latent cells (the bundle's widest: 18)
NETWORK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class CardProblem(ValueError):
    """What is wrong with a card's values, naming the field (``parse`` words it as a LatentSRError)."""


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def plain(value):
    """A card value as JSON values, copied (typed entries by their to_json, tuples as lists)."""
    if isinstance(value, Entry):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Entry:
    """A typed part of a card. ``given``: its JSON keys in the order written (a field not among them was
    defaulted); ``extra``: the keys the engine does not read, as written."""

    given: tuple[str, ...] = field(default=(), kw_only=True, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True, repr=False)

    def to_json(self) -> dict:
        """The JSON this entry was parsed from."""
        return {key: plain(self.extra[key] if key in self.extra else getattr(self, key)) for key in self.given}


def kept(raw: dict, typed) -> dict:
    """The keys of ``raw`` that are not typed fields of the entry class ``typed``."""
    names = {f.name for f in fields(typed)} - {"given", "extra"}
    return {k: v for k, v in raw.items() if k not in names}


def whole(raw: dict, key: str, where: str, default: int) -> int:
    """``raw[key]`` as a whole number ≥ 1 (``default`` when absent)."""
    if key not in raw:
        return default
    if not positive_int(raw[key]):
        raise CardProblem(f"'{where}{key}' must be a whole number of at least 1, got {raw[key]!r}")
    return raw[key]


def obj(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise CardProblem(f"'{what}' must be an object")
    return value


@dataclass(frozen=True)
class Network(Entry):
    """A network: its kind (engine.models.KINDS) and constructor config."""

    kind: str
    config: dict

    @classmethod
    def parse(cls, name: str, raw, bands: int | None, entry: str | None = None) -> Network:
        """``entry``: where the card holds it (``networks.<name>`` unless given); ``bands``: the card's."""
        entry = entry or f"networks.{name}"
        if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
            kind = raw.get("kind") if isinstance(raw, dict) else raw
            raise CardProblem(f"'{entry}.kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(raw.get("config"), dict):
            raise CardProblem(f"'{entry}.config' must be an object")
        config_bounds(entry, raw["config"])
        if bands is not None and raw["config"].get("bands", bands) != bands:
            raise CardProblem(f"'{entry}.config.bands' is {raw['config']['bands']!r} but the card's 'bands' is {bands}")
        return cls(raw["kind"], raw["config"], given=tuple(raw), extra=kept(raw, cls))


def config_bounds(entry: str, config: dict) -> None:
    """Every whole number of a network's config (alone or in a list) is between 0 and CONFIG_LIMIT, and
    every list has at most CONFIG_LIST_LIMIT entries."""
    for key, value in config.items():
        if isinstance(value, list) and len(value) > CONFIG_LIST_LIMIT:
            raise CardProblem(f"'{entry}.config.{key}' has {len(value)} entries, more than the {CONFIG_LIST_LIMIT} "
                              f"a network may have")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= CONFIG_LIMIT:
                raise CardProblem(f"'{entry}.config.{key}' is {value!r}: a network's sizes are between 0 and "
                                  f"{CONFIG_LIMIT}")


@dataclass(frozen=True)
class MethodSpec(Entry):
    """A learned method's entry (``methods.<name>``; a stage-2 run's card holds its fields at the top):
    its networks by role, its latent layout and scale, its sampler's fields and its step range."""

    name: str
    condition: str | None = None
    denoiser: str | None = None
    latent_scale: float = 1.0
    latent: int = LATENT  # the card's latent (parse)
    features: int = 0  # LR feature channels the condition carries beside the latent guess
    spread: bool = False  # the condition carries the latent's spread; the sampler draws the standardised residual
    betas: tuple[float, ...] = ddpm.DEFAULT_BETAS  # E²DiffSR's chain
    eta: float = 1.0
    prediction: str = "eps"
    T: int = consistency.T  # LCMSR's
    sigma_data: float = consistency.SIGMA_DATA
    steps: int = 0  # the default steps (the registry's unless the card says)
    max_steps: int = 0  # the most steps: the betas' count, the card's max_steps, else the registry's
    detail_default: float | None = None  # stochastic methods: the card's detail_default, else the registry's
    sample_edge: tuple[int, ...] | None = None  # the sampled latent's measured edge at 1..max_steps steps (training.reach)

    def edge(self, steps: int) -> int:
        """The latent cells beyond a tile's trusted output that the latent this method samples in
        ``steps`` steps still reads (engine.reach): the card's measurement, else SAMPLE_EDGE_CELLS."""
        return SAMPLE_EDGE_CELLS if self.sample_edge is None else self.sample_edge[steps - 1]

    @property
    def split(self) -> bool:
        """Whether the condition holds more than the latent guess (features or the spread)."""
        return bool(self.features) or self.spread

    @classmethod
    def parse(cls, name: str, raw, latent: int, where: str | None = None, networks=None) -> MethodSpec:
        """The entry ``raw`` of method ``name`` at ``where`` (``methods.<name>.`` unless given), with the card's
        ``latent``; ``networks``: the card's networks, which the roles must name (None: no roles checked)."""
        where = f"methods.{name}." if where is None else where
        method = REGISTRY.get(name)
        if method is None or not method.learned:
            raise CardProblem(f"'methods.{name}' is not a known method (known: {', '.join(LEARNED)})")
        if not isinstance(raw, dict):
            raise CardProblem(f"'methods.{name}' must be an object")
        if networks is not None:
            for role in method.roles:
                if raw.get(role) not in networks:
                    raise CardProblem(f"'{where}{role}' names the network {raw.get(role)!r}, "
                                      f"which is not in 'networks'")
        values = {k: raw[k] for k in ("condition", "denoiser", "eta", "T", "sigma_data", "features", "spread")
                  if k in raw}
        if "prediction" in raw and raw["prediction"] not in ddpm.PREDICTIONS:
            raise CardProblem(f"'{where}prediction' must be one of {', '.join(ddpm.PREDICTIONS)}, "
                              f"got {raw['prediction']!r}")
        scale = raw.get("latent_scale", cls.latent_scale)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise CardProblem(f"'{where}latent_scale' must be a finite number greater than 0, got {scale!r}")
        steps, top = steps_of(name, raw, where)
        detail = raw.get("detail_default", method.default_detail) if method.stochastic else None
        if detail is not None and (isinstance(detail, bool) or not isinstance(detail, (int, float))
                                   or not 0 <= detail <= 1):
            raise CardProblem(f"'{where}detail_default' is {detail!r}: detail must be between 0 and 1")
        edge = sample_edge(raw, where, top) if "sample_edge" in raw else None
        if edge is not None and not method.stochastic:
            raise CardProblem(f"'{where}sample_edge' is given, but {name} does not sample a latent")
        extra = kept(raw, cls)
        if "betas" in raw and "max_steps" in raw:  # the betas' count is the most steps: max_steps stays as written
            extra["max_steps"] = raw["max_steps"]
        return cls(name, **values, latent_scale=scale, latent=whole(raw, "latent", where, latent),
                   betas=tuple(raw.get("betas", cls.betas)), prediction=raw.get("prediction", cls.prediction),
                   steps=steps, max_steps=top, detail_default=detail, sample_edge=edge, given=tuple(raw), extra=extra)


def sample_edge(raw: dict, where: str, top: int) -> tuple[int, ...]:
    """A method entry's ``sample_edge``: one whole number of latent cells, 0 to EDGE_LIMIT, for each
    step count from 1 to the method's most steps ``top``."""
    value = raw["sample_edge"]
    if (not isinstance(value, list) or len(value) != top
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= EDGE_LIMIT for v in value)):
        raise CardProblem(f"'{where}sample_edge' must list {top} whole numbers of latent cells between 0 and "
                          f"{EDGE_LIMIT}, one for each step count, got {value!r}")
    return tuple(value)


def steps_of(name: str, raw: dict, where: str) -> tuple[int, int]:
    """(default steps, most steps) of a method entry: the engine's own step range of the method
    (engine.registry) bounds the card's too, so a card's betas, max_steps and steps lie within 1..the
    registry's max_steps. A deterministic method runs 0 steps."""
    method = REGISTRY[name]
    top = method.max_steps
    if top == 0:
        return 0, 0
    bounds = f"LatentSR runs {name} with 1 to {top} steps"
    if "betas" in raw:
        if not isinstance(raw["betas"], list) or not 1 <= len(raw["betas"]) <= top:
            count = len(raw["betas"]) if isinstance(raw["betas"], list) else repr(raw["betas"])
            raise CardProblem(f"'{where}betas' gives {count} steps: {bounds}")
        top = len(raw["betas"])
    elif "max_steps" in raw:
        if not positive_int(raw["max_steps"]) or raw["max_steps"] > top:
            raise CardProblem(f"'{where}max_steps' is {raw['max_steps']!r}: {bounds}")
        top = raw["max_steps"]
    if "steps" in raw and (not positive_int(raw["steps"]) or raw["steps"] > top):
        raise CardProblem(f"'{where}steps' is {raw['steps']!r}: {name} runs with 1 to {top} steps in this model")
    return raw.get("steps", method.default_steps), top


@dataclass(frozen=True)
class Weights(Entry):
    file: str = WEIGHTS
    sha256: str | None = None


@dataclass(frozen=True)
class Encoder(Entry):
    """The stage-1 encoder a bundle ships for fine-tuning, in its own file (inference never loads it)."""

    file: str
    config: dict
    sha256: str | None = None

    @property
    def network(self) -> Network:
        return Network("encoder", self.config, given=("kind", "config"))


@dataclass(frozen=True)
class Graph(Entry):
    """An ONNX graph of the bundle: its file, SHA-256, the networks it holds and its inputs."""

    file: str
    networks: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    sha256: str | None = None


@dataclass(frozen=True)
class Onnx(Entry):
    graphs: Mapping[str, Graph]
    weights_sha256: str | None = None  # the weights the graphs were exported from


def files(raw: dict) -> tuple[Weights, Encoder | None, Onnx | None]:
    """The card's entries that name files: the weights are model.safetensors; every other entry is an
    object with a string 'file', the graphs' ending in .onnx (export-onnx removes the graphs it no longer
    writes: never another kind of file)."""
    weights = raw.get("weights", {})
    if not isinstance(weights, dict) or weights.get("file", WEIGHTS) != WEIGHTS:
        raise CardProblem(f"'weights' must be an object whose 'file' is {WEIGHTS}")
    weights = Weights(sha256=weights.get("sha256"), given=tuple(weights), extra=kept(weights, Weights))
    encoder = raw.get("encoder")
    if encoder:
        if not (isinstance(encoder, dict) and isinstance(encoder.get("file"), str)
                and isinstance(encoder.get("config"), dict)):
            raise CardProblem("'encoder' must be an object with a 'file' name and a 'config' object")
        encoder = Encoder(encoder["file"], encoder["config"], encoder.get("sha256"), given=tuple(encoder),
                          extra=kept(encoder, Encoder))
    onnx = raw.get("onnx")
    if not onnx:
        return weights, encoder or None, None
    if not isinstance(onnx, dict) or not isinstance(onnx.get("graphs", {}), dict):
        raise CardProblem("'onnx' must be an object whose 'graphs' is an object")
    graphs = {}
    for key, entry in onnx.get("graphs", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"].endswith(".onnx"):
            raise CardProblem(f"'onnx.graphs.{key}.file' must be the name of a .onnx file")
        if not isinstance(entry.get("networks"), list) or not all(isinstance(n, str) for n in entry["networks"]):
            raise CardProblem(f"'onnx.graphs.{key}.networks' must be a list of network names")
        inputs = entry.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(n, str) for n in inputs):
            raise CardProblem(f"'onnx.graphs.{key}.inputs' must be a list of input names")
        graphs[key] = Graph(entry["file"], tuple(entry["networks"]), tuple(inputs), entry.get("sha256"),
                            given=tuple(entry), extra=kept(entry, Graph))
    return weights, encoder or None, Onnx(graphs, onnx.get("weights_sha256"), given=tuple(onnx),
                                          extra=kept(onnx, Onnx))


@dataclass(frozen=True)
class Card(Entry):
    """A model card. A bundle's names its methods; a training stage's run folder has ``kind`` (stage1 or
    the method), and a stage-2 run's holds its method's fields at the top (``stage``) and the SHA-256 of
    the stage-1 weights it was trained on (``stage1``)."""

    bands: int
    latent: int
    networks: Mapping[str, Network]
    name: str | None = None
    decoder: str = DECODER
    methods: Mapping[str, MethodSpec] = field(default_factory=dict)
    weights: Weights = Weights()
    encoder: Encoder | None = None
    onnx: Onnx | None = None
    normalisation: Any = None  # how the input is normalised: words, or per raster and band (a run on rasters)
    training: Mapping[str, Any] = field(default_factory=dict)  # how each stage was trained, as recorded
    kind: str | None = None
    stage: MethodSpec | None = None
    stage1: str | None = None

    def to_json(self) -> dict:
        out = {}
        for key in self.given:
            if key in self.extra:
                out[key] = plain(self.extra[key])
            elif key == "stage1":
                out[key] = {"sha256": self.stage1}
            elif key in TOP_FIELDS:
                out[key] = plain(getattr(self, key))
            else:  # a stage-2 run's method field
                out[key] = plain(self.stage.extra[key] if key in self.stage.extra else getattr(self.stage, key))
        return out

    def updated(self, **values) -> Card:
        """This card with the JSON ``values`` set (an existing key keeps its place, a new one comes last),
        parsed and checked anew."""
        return parse(dict(self.to_json(), **values))

    def method_spec(self, name: str) -> MethodSpec:
        """The entry of method ``name``; a LatentSRError if the model does not have it."""
        if name not in self.methods:
            raise LatentSRError(f"the model '{self.name}' cannot run method '{name}': "
                                f"it has {', '.join(self.methods) or 'no methods'}")
        return self.methods[name]

    def network(self, name: str) -> Network:
        if name not in self.networks:
            raise LatentSRError(f"the model '{self.name}' has no network '{name}'")
        return self.networks[name]

    def files(self) -> list[tuple[str, str]]:
        """(field, file name) of every file the card names."""
        out = [("weights.file", self.weights.file)]
        if self.encoder:
            out.append(("encoder.file", self.encoder.file))
        for key, entry in (self.onnx.graphs if self.onnx else {}).items():
            out.append((f"onnx.graphs.{key}.file", entry.file))
        return out


TOP_FIELDS = {f.name for f in fields(Card)} - {"given", "extra", "stage", "stage1"}
STAGE_FIELDS = {f.name for f in fields(MethodSpec)} - {"given", "extra", "name", "condition", "denoiser"}


def parse(raw, path=None) -> Card:
    """The card of the JSON ``raw``; a LatentSRError naming the field for anything the engine cannot run.
    ``path``: the card file it was read from (its format and version are then required, and messages name
    it); None for a card that training is about to write."""
    where = f" {path}" if path is not None else ""
    if path is not None:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise LatentSRError(f"{path} is not a LatentSR model card")
        if raw.get("version") != VERSION:
            raise LatentSRError(f"{path} has format version {raw.get('version')}, "
                                f"this LatentSR reads version {VERSION}")
    elif not isinstance(raw, dict):
        raise LatentSRError("the model card is not valid: it must be an object")
    try:
        return parse_values(raw)
    except CardProblem as e:
        raise LatentSRError(f"the model card{where} is not valid: {e}") from None


def parse_values(raw: dict) -> Card:
    if not positive_int(raw.get("bands")):
        raise CardProblem(f"'bands' must be a whole number of at least 1, got {raw.get('bands')!r}")
    bands = raw["bands"]
    networks = raw.get("networks")
    if not isinstance(networks, dict) or not networks:
        raise CardProblem("'networks' must name at least one network")
    for name in networks:
        if not NETWORK_NAME.fullmatch(name) or ".." in name:
            raise CardProblem(f"'networks' has a network named {name!r}: a name is letters, digits, '.', '_' and '-' "
                              f"(it names its files)")
    networks = {name: Network.parse(name, spec, bands) for name, spec in networks.items()}
    weights, encoder, onnx = files(raw)
    decoder = raw.get("decoder", DECODER)
    latent = whole(raw, "latent", "", 0) or default_latent(networks, decoder)
    methods = obj(raw.get("methods", {}), "methods")  # a stage 1 bundle has none
    if methods and decoder not in networks:
        raise CardProblem(f"'decoder' names the network {decoder!r}, which is not in 'networks'")
    methods = {name: MethodSpec.parse(name, spec, latent, networks=networks) for name, spec in methods.items()}
    kind = raw.get("kind")
    stage = MethodSpec.parse(kind, raw, latent, where="") if kind in LEARNED else None
    stage1 = raw.get("stage1")
    if stage1 is not None and not (isinstance(stage1, dict) and set(stage1) == {"sha256"}):
        raise CardProblem("'stage1' must be an object with the 'sha256' of the stage-1 weights")
    typed = TOP_FIELDS | ({"stage1"} if stage1 is not None else set()) | (STAGE_FIELDS if stage else set())
    training = obj(raw.get("training", {}), "training")
    # an empty encoder or onnx entry means none, and is written back as it was
    extra = {k: v for k, v in raw.items() if k not in typed or (k in ("encoder", "onnx") and not v)}
    return Card(bands, latent, networks, name=raw.get("name"), decoder=decoder, methods=methods, weights=weights,
                encoder=encoder, onnx=onnx, normalisation=raw.get("normalisation"), training=training, kind=kind,
                stage=stage, stage1=stage1["sha256"] if stage1 else None, given=tuple(raw), extra=extra)


def default_latent(networks: Mapping[str, Network], decoder: str) -> int:
    """The latent width of a card that does not give it: its decoder's (else any network's), else the presets'."""
    order = [networks[decoder]] if decoder in networks else []
    for net in order + list(networks.values()):
        if positive_int(net.config.get("latent")):
            return net.config["latent"]
    return LATENT
