"""Inference bundles for the engine: resources/models/<name>/ with model.json + model.safetensors.

A bundle holds the stage-1 decoder and, per diffusion method, its conditioning net and denoiser.
A stage-2 run that trained the decoder too (``--train-decoder``, training.latent) gives the bundle
its decoder instead (only one run may), which the other method then decodes with: that decoder was
kept a decoder of stage 1's latent by its fidelity term.
``regression`` uses the LCMSR conditioning net when there is one, else E²DiffSR's. Beside them, for
fine-tuning only, a bundle made from training stages ships the stage-1 encoder in its own file
(ENCODER, named in the card's ``encoder`` entry with its SHA-256): inference never loads it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine import modelfile
from engine.card import Card, parse
from engine.errors import LatentSRError
from engine.models import LATENT, build, preset
from engine.registry import E2DIFFSR, LCMSR, REGISTRY, REGRESSION

from .errors import TrainingError

NORMALISATION = "the engine's normalised units: value/255 for 8-bit imagery"
ENCODER = "encoder.safetensors"
STAGE2 = (E2DIFFSR, LCMSR)  # the diffusion methods training makes, in its order (random_bundle draws in it)


def make_card(name: str, bands: int, latent: int, networks: dict, methods: dict, training: dict) -> dict:
    return {"name": name, "bands": bands, "latent": latent, "scale_range": [1, 8],
            "normalisation": NORMALISATION, "decoder": "decoder", "networks": networks,
            "methods": methods, "training": training}


STAGE_FIELDS = ("betas", "eta", "prediction", "steps", "T", "sigma_data", "max_steps", "features", "spread", "latent")


def method_spec(method: str, latent_scale: float, written: dict | None = None) -> dict:
    """The card entry (JSON) of a diffusion method (its networks are '<method>.condition/denoiser'), with
    the sampler fields that its stage-2 run's card (its JSON, ``written``) gives."""
    spec = {role: f"{method}.{role}" for role in REGISTRY[method].roles}
    spec.update(latent_scale=latent_scale, **REGISTRY[method].new_spec())
    if written:
        spec.update({k: written[k] for k in STAGE_FIELDS if k in written})
    return spec


def with_regression(methods: dict) -> dict:
    """``methods`` and the regression entry: the LCMSR conditioning net when there is one, else E²DiffSR's."""
    source = next(methods[m.name] for m in (LCMSR, E2DIFFSR) if m.name in methods)
    regression = {k: source[k] for k in ("condition", "latent_scale", "features", "spread", "latent") if k in source}
    return {**methods, REGRESSION.name: regression}


def random_bundle(preset_name: str = "default", bands: int = 3, seed: int = 0,
                  name: str = "random") -> tuple[Card, dict]:
    """A randomly initialised bundle (card, tensors): for tests and speed benchmarks."""
    torch.manual_seed(seed)
    networks, tensors = {}, {}
    kinds = {"decoder": "decoder", **{f"{m.name}.{role}": role for m in STAGE2 for role in m.roles}}
    for net_name, kind in kinds.items():
        config = preset(preset_name, kind, bands=bands)
        net = build(kind, config)
        networks[net_name] = {"kind": kind, "config": config}
        tensors.update({f"{net_name}.{k}": v for k, v in net.state_dict().items()})
    methods = with_regression({m.name: method_spec(m.name, 1.0) for m in STAGE2})
    card = make_card(name, bands, LATENT, networks, methods, {"data": "none: random initialisation", "seed": seed})
    return parse(card), tensors


def check_run(card: Card, folder: str, method: str, stage1_sha: str, stage1: str, stage: str | None = None) -> None:
    """Refuse the card of a run folder that is not ``method``'s (nor, with ``stage``, that stage's) or
    was trained on another stage-1 model than ``stage1`` (weights ``stage1_sha``)."""
    if card.kind != method or (stage and card.training["stage"] != stage):
        raise TrainingError(f"{folder} is not the output of an {stage or method} run")
    if card.stage1 != stage1_sha:
        raise TrainingError(f"{folder} was trained on another stage-1 model than {stage1}")


def from_stages(stage1: str, e2diffsr: str | None, lcmsr: str | None, name: str,
                add: str | None = None, add_e2diffsr: str | None = None) -> tuple[Card, dict]:
    """(card, tensors) of an inference bundle made from the output folders of the training stages.
    With ``add`` (the run of ``python -m training add``), LCMSR's networks and the decoder come from
    it; with ``add_e2diffsr`` (``python -m training add-e2diffsr``, trained through that decoder),
    E²DiffSR's networks; the card records the run each started from (``lcmsr``, ``e2diffsr``) beside it."""
    if not (e2diffsr or lcmsr or add or add_e2diffsr):
        raise TrainingError("give at least one of --e2diffsr and --lcmsr")
    card1, t1 = modelfile.load(stage1)
    networks = {"decoder": card1.networks["decoder"].to_json()}
    tensors = {f"decoder.{k}": v for k, v in modelfile.network_tensors(t1, "decoder").items()}
    methods, training = {}, {"stage1": dict(card1.training)}
    decoder_from = decoder_sha = None
    for method, start, last, last_stage in ((E2DIFFSR.name, e2diffsr, add_e2diffsr, "add-e2diffsr"),
                                            (LCMSR.name, lcmsr, add, "add")):
        if last and start:  # the record of the run the last stage started from
            card = modelfile.read_card(Path(start))
            check_run(card, start, method, card1.weights.sha256, stage1)
            training[method] = dict(card.training)
        folder = last or start
        if not folder:
            continue
        card, t = modelfile.load(folder)
        check_run(card, folder, method, card1.weights.sha256, stage1, last_stage if folder == last else None)
        for net in REGISTRY[method].roles:
            networks[f"{method}.{net}"] = card.networks[net].to_json()
            tensors.update({f"{method}.{net}.{k}": v for k, v in modelfile.network_tensors(t, net).items()})
        if "decoder" in card.networks:  # a run with --train-decoder (training.latent) trained its own
            if decoder_from:
                raise TrainingError(f"{decoder_from} and {folder} both trained the decoder: the bundle has one, "
                                    "train it in one run only")
            decoder_from, decoder_sha = folder, card.weights.sha256
            networks["decoder"] = card.networks["decoder"].to_json()
            tensors.update({f"decoder.{k}": v for k, v in modelfile.network_tensors(t, "decoder").items()})
        methods[method] = method_spec(method, card.stage.latent_scale, card.to_json())
        training[card.training["stage"]] = dict(card.training)
    trained_on = training.get("add-e2diffsr", {}).get("options", {}).get("decoder_sha256")
    if trained_on and trained_on != decoder_sha:
        raise TrainingError(f"{add_e2diffsr} was trained through the decoder of another add run than "
                            f"{add or 'none (give it as --add)'}")
    card = make_card(name, card1.bands, card1.latent, networks, with_regression(methods), training)
    if card1.normalisation is not None:  # a run on rasters records each raster's per-band normalisation
        card["normalisation"] = card1.normalisation
    return parse(card), tensors


def stage1_encoder(stage1: str) -> tuple[dict, dict]:
    """The encoder of a stage-1 run folder: (its network spec, its state dict)."""
    card, tensors = modelfile.load(stage1)
    return card.networks["encoder"].to_json(), modelfile.network_tensors(tensors, "encoder")


def write(folder: str | Path, card: Card, tensors: dict, encoder: tuple[dict, dict] | None = None) -> Path:
    """Write a bundle; ``encoder`` (spec, state dict) goes to its own file ENCODER."""
    from safetensors.torch import save as save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if encoder is not None:
        data = save_safetensors({f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder[1].items()})
        modelfile.write_member(folder, ENCODER, "encoder.file", data)
        card = card.updated(encoder=dict(encoder[0], file=ENCODER, sha256=modelfile.sha256(data),
                                         use="stage-1 encoder for fine-tuning (python -m training finetune); "
                                             "inference never loads it"))
    return modelfile.save(folder, card, tensors)


def load_encoder(ref: str) -> tuple[dict, dict] | None:
    """(spec, state dict) of the stage-1 encoder a bundle ships (checked against its SHA-256, its
    configuration against the weights' shapes before it is built), or None when it has none."""
    from safetensors.torch import load as load_safetensors

    folder = modelfile.resolve(ref)
    entry = modelfile.read_card(folder).encoder
    if entry is None:
        return None
    try:
        data = modelfile.read_weights(folder, entry.file, "encoder.file", entry.sha256, "bundle's encoder")
        tensors = load_safetensors(data)
        modelfile.check_shapes("encoder", entry.network, tensors, folder / modelfile.CARD, "encoder")
    except LatentSRError as e:
        raise TrainingError(str(e)) from None
    return entry.network.to_json(), modelfile.network_tensors(tensors, "encoder")
