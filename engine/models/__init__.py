"""The networks of LatentSR, one per file, and the presets that size them.

A network is described in a model card by its kind and its constructor config; ``build`` makes it.
"""
from __future__ import annotations

KINDS = ("encoder", "decoder", "condition", "denoiser")
LATENT = 16  # latent channels per cell of 8×8 output pixels (the first bundle had 4 and no detail path)

# Constructor configs per kind. "default" is sized for CPU inference; "small" and "tiny" are
# for quick experiments and tests. The discriminator (training only: training.adversary) is sized
# here too, though no bundle carries it.
PRESETS = {
    "default": {
        "encoder": {"channels": [32, 64, 96]},
        "decoder": {"channels": 48, "blocks": 4, "up_channels": 8, "tail_channels": 16, "emb_dim": 64, "detail": True},
        "condition": {"channels": 64, "blocks": 2, "emb_dim": 64},
        "denoiser": {"channels": [64, 96, 128], "emb_dim": 128},
        "discriminator": {"channels": [32, 64, 128]},
    },
    "small": {
        "encoder": {"channels": [16, 24, 32]},
        "decoder": {"channels": 24, "blocks": 2, "up_channels": 8, "tail_channels": 8, "emb_dim": 32, "detail": True},
        "condition": {"channels": 24, "blocks": 1, "emb_dim": 32},
        "denoiser": {"channels": [24, 32, 48], "emb_dim": 32},
        "discriminator": {"channels": [16, 32, 64]},
    },
    "tiny": {
        "encoder": {"channels": [8, 8, 8]},
        "decoder": {"channels": 8, "blocks": 1, "up_channels": 4, "tail_channels": 4, "emb_dim": 8, "detail": True},
        "condition": {"channels": 8, "blocks": 1, "emb_dim": 8},
        "denoiser": {"channels": [8, 8, 8], "emb_dim": 8},
        "discriminator": {"channels": [8, 8, 8]},
    },
}


def build(kind: str, config: dict):
    """A freshly initialised network of ``kind`` from its constructor config."""
    if kind == "encoder":
        from .encoder import Encoder as cls
    elif kind == "decoder":
        from .decoder import Decoder as cls
    elif kind == "condition":
        from .condition import ConditionNet as cls
    elif kind == "denoiser":
        from .denoiser import Denoiser as cls
    else:
        raise ValueError(f"unknown network kind '{kind}': choose one of {', '.join(KINDS)}")
    return cls(**config)


def preset(name: str, kind: str, bands: int = 3, latent: int = LATENT) -> dict:
    """The full constructor config of ``kind`` in preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    config = dict(PRESETS[name][kind], latent=latent)
    if kind != "denoiser":
        config["bands"] = bands
    return config
