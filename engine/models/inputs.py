"""How each network is called, once: its named inputs (pure Python, no torch).

Each struct lists a network's inputs in the order of its ``forward``, which is also the order and the
names of the inputs of its ONNX graph (training.export names the graph's inputs by these fields). A
torch module is called ``net(*inputs)``, an ONNX graph ``graph(**inputs._asdict())``
(engine.torch_backend, engine.onnx_backend); training and the bench call the networks the same way.
The fields hold the backend's arrays: torch tensors or numpy arrays. The tables are those of
engine.models.sampling.Plan, named as in ``Plan.arrays``.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple


class ConditionInputs(NamedTuple):
    """engine.models.condition.ConditionNet: the LR and the tables to the latent-aligned HR positions."""

    lr: Any  # (B, bands, h, w)
    inv_scale: Any  # (B, 1)
    hr_y_idx: Any
    hr_y_w: Any
    hr_x_idx: Any
    hr_x_w: Any

    @classmethod
    def of(cls, arrays: Mapping, **given) -> "ConditionInputs":
        """The inputs by name from ``given``, else from a tile's ``arrays`` (lr, inv_scale and the tables)."""
        return cls(*(given[f] if f in given else arrays[f] for f in cls._fields))

    @property
    def hr_tables(self) -> tuple:
        """The LR -> HR tables (ConditionNet.upsample's arguments after the LR)."""
        return self.hr_y_idx, self.hr_y_w, self.hr_x_idx, self.hr_x_w


class DenoiserInputs(NamedTuple):
    """engine.models.denoiser.Denoiser: the noised latent, the condition, t/T and 1/scale."""

    z_t: Any  # (B, latent, h_lat, w_lat)
    cond: Any  # (B, latent + features, h_lat, w_lat)
    t_frac: Any  # (B, 1)
    inv_scale: Any  # (B, 1)


class DecoderInputs(NamedTuple):
    """engine.models.decoder.Decoder: the LR, the latent, and the tables to the output pixels and to the
    latent cells."""

    lr: Any  # (B, bands, h, w)
    z: Any  # (B, latent, h_lat, w_lat), the latent unnormalised (divided by the card's latent_scale)
    inv_scale: Any  # (B, 1)
    out_y_idx: Any
    out_y_w: Any
    out_x_idx: Any
    out_x_w: Any
    lat_y_idx: Any
    lat_y_w: Any
    lat_x_idx: Any
    lat_x_w: Any

    @classmethod
    def of(cls, arrays: Mapping, **given) -> "DecoderInputs":
        """The inputs by name from ``given`` (the latent ``z``), else from a tile's ``arrays``."""
        return cls(*(given[f] if f in given else arrays[f] for f in cls._fields))


def fused_inputs(own: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The inputs of a method's single-call ONNX graph (engine.latent.run_tile over the networks): the LR,
    the method's ``own`` (engine.registry.base.Method.fused_inputs: the start noise), 1/scale, then the
    tables of the condition and of the decoder."""
    return ("lr", *own, "inv_scale", *ConditionInputs._fields[2:], *DecoderInputs._fields[3:])


INPUTS = {"condition": ConditionInputs, "denoiser": DenoiserInputs, "decoder": DecoderInputs}  # by network kind
