"""Starting a network of one band count from the weights of another (an RGB bundle fine-tuned on
RGBN, say).

Only the layers that read or write the bands change shape. A band the old network had keeps its
filters; a new band's filters start as the mean of the old bands' filters. The filters that read
the bands are then scaled by old/new band count, so that an image whose bands are all equal gives
the old network's response. Band k of the new network is band k of the old one (k < the old count).
"""
from __future__ import annotations

import torch

from .errors import TrainingError

# (network kind, parameter) -> (dim, groups, inner, reads): the band axis of the parameter is dim,
# laid out as groups × bands × inner (pixel_shuffle's and torch.cat's orders); ``reads``: the layer
# reads the bands (dim 1 of a weight), else it writes them.
BAND_LAYERS = {
    ("decoder", "head.weight"): (1, 1, 1, True),
    ("decoder", "tail.2.weight"): (0, 1, 1, False),
    ("decoder", "tail.2.bias"): (0, 1, 1, False),
    ("decoder", "detail.weight"): (0, 1, 64, False),
    ("decoder", "detail.bias"): (0, 1, 64, False),
    ("condition", "head.weight"): (1, 1, 64, True),
    ("encoder", "analysis.weight"): (1, 1, 64, True),
    ("encoder", "head.weight"): (1, 2, 1, True),
}


def adapt(kind: str, name: str, old: torch.Tensor, old_bands: int, new_bands: int) -> torch.Tensor:
    """Parameter ``name`` of a ``kind`` network with ``old_bands`` bands, for ``new_bands`` bands."""
    if old_bands == new_bands or (kind, name) not in BAND_LAYERS:
        return old
    dim, groups, inner, reads = BAND_LAYERS[(kind, name)]
    shape = list(old.shape)
    x = old.reshape(shape[:dim] + [groups, old_bands, inner] + shape[dim + 1:])
    axis = dim + 1
    mean = x.mean(axis, keepdim=True)
    parts = [x.narrow(axis, k, 1) if k < old_bands else mean for k in range(new_bands)]
    y = torch.cat(parts, axis)
    if reads:
        y = y * (old_bands / new_bands)
    shape[dim] = groups * new_bands * inner
    return y.reshape(shape).contiguous()


def adapt_state(kind: str, state: dict, old_bands: int, new_bands: int) -> dict:
    """A network's state dict for another band count (see ``adapt``)."""
    return {k: adapt(kind, k, v, old_bands, new_bands) for k, v in state.items()}


def load_adapted(net: torch.nn.Module, kind: str, state: dict, old_bands: int, skip: tuple[str, ...] = ()) -> list[str]:
    """Load ``state`` (of an ``old_bands`` network of ``kind``) into ``net``, adapting the band
    layers; parameters named with a prefix in ``skip``, or whose shape still differs (another latent
    size), keep their start. Returns the names that were not loaded."""
    own = net.state_dict()
    new_bands = net.config["bands"] if "bands" in net.config else old_bands
    left = []
    with torch.no_grad():
        for key, value in adapt_state(kind, state, old_bands, new_bands).items():
            if key in own and own[key].shape == value.shape and not key.startswith(skip):
                own[key].copy_(value)
            else:
                left.append(key)
    if not set(own) & set(state):
        raise TrainingError(f"no weight of the start {kind} fits this {kind}")
    return left


def describe(old_bands: int, new_bands: int) -> str:
    """What the card says about how the bands started."""
    if new_bands <= old_bands:
        return (f"bands 1-{new_bands} started from the filters of bands 1-{new_bands} of the {old_bands}-band start model; "
                f"the filters that read the bands were scaled by {old_bands}/{new_bands}")
    new = f"band {new_bands}" if new_bands == old_bands + 1 else f"bands {old_bands + 1}-{new_bands}"
    return (f"bands 1-{old_bands} started from the start model's filters; {new} started from the mean of its "
            f"{old_bands} bands' filters in the first and last layers (decoder head, tail and detail path, "
            f"conditioning net head, encoder analysis and head); the filters that read the bands were scaled by "
            f"{old_bands}/{new_bands}, so an image with equal bands gives the start model's response")
