"""Starting a network of one band count from the weights of another (an RGB bundle fine-tuned on
RGBN, say).

The decoder gains bands by width: one block-diagonal copy of its trunk per band group
(``widen_decoder``), so it starts exactly as the start model run by band groups, which gives every
group the whole network (measured on NAIP: a shared trunk whose new band started from the mean filters
stayed 2.1 dB behind the RGB model run on [NIR, NIR, NIR] after 1400 steps). The other networks
follow the rule below.

Only the layers that read or write the bands change shape. A band the old network had keeps its
filters; a new band's filters start as the mean of the old bands' filters. The filters that read
the bands are then scaled by old/new band count, so that an image whose bands are all equal gives
the old network's response. Band k of the new network is band k of the old one (k < the old count).
"""
from __future__ import annotations

import torch

from engine.latent import band_groups

from .errors import TrainingError
from .widen import deepen_trunk, trunk_blocks, trunk_channels, widen_trunk

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
    widened = (kind == "decoder" and band_group_copies(old_bands, new_bands) > 1 and "head.weight" in state
               and own["head.weight"].shape[0] != state["head.weight"].shape[0])
    start = widen_decoder(state, old_bands, new_bands) if widened else adapt_state(kind, state, old_bands, new_bands)
    if kind == "decoder" and "head.weight" in start:  # a wider or deeper trunk than the start's
        if trunk_channels(start) != trunk_channels(own):
            start = widen_trunk(start, own)
        deepen_trunk(net, trunk_blocks(start))
    left = []
    with torch.no_grad():
        for key, value in start.items():
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
    copies = band_group_copies(old_bands, new_bands)
    return (f"the decoder has {copies} copies of the start model's trunk, one per band group of {old_bands} bands, "
            f"block-diagonal, so it started as the start model run on each band group (a short group's bands "
            f"cycled, as the engine does); all copies read the one latent; bands 1-{old_bands} of the other "
            f"networks started from the start model's filters and {new} from the mean of its {old_bands} bands' "
            f"filters (conditioning net head, encoder analysis and head), the filters that read the bands scaled "
            f"by {old_bands}/{new_bands}")


def band_group_copies(old_bands: int, new_bands: int) -> int:
    """How many copies of a decoder's trunk a band count gets: one per band group the engine would
    run the start model on (ceil(new / old)), and 1 when no band is added."""
    return max(1, -(-new_bands // old_bands))


def group_rows(old_bands: int, new_bands: int) -> list[tuple[int, list[int]]]:
    """(copy, the start model's band positions it reads as this band) per new band, from the
    engine's own band groups (engine.latent.band_groups: a short last group cycles its bands)."""
    return [(g, [p for p, member in enumerate(members) if member == b])
            for g, members in enumerate(band_groups(new_bands, old_bands)) for b in sorted(set(members))]


def widen_decoder(state: dict, old_bands: int, new_bands: int) -> dict:
    """The state of a decoder with one trunk per band group (channels, pyramid and tail widths times
    ``band_group_copies``) that starts as the start decoder run on each band group: block-diagonal
    copies of every layer, each reading and writing its own group's bands (a short group's band reads
    the sum of the filters of the positions it fills and writes their mean). All copies read the one
    shared latent. The network can then learn across groups from that start."""
    k = band_group_copies(old_bands, new_bands)
    rows = group_rows(old_bands, new_bands)

    def diag(w):  # block-diagonal over the first two axes
        out = w.new_zeros((k * w.shape[0], k * w.shape[1]) + tuple(w.shape[2:]))
        for g in range(k):
            out[g * w.shape[0]:(g + 1) * w.shape[0], g * w.shape[1]:(g + 1) * w.shape[1]] = w
        return out

    def halves(w, fn):  # [scale; shift] outputs: each half widened by fn
        a, b = w.chunk(2, dim=0)
        return torch.cat([fn(a), fn(b)], 0)

    def rep(w):  # the same rows for every copy
        return torch.cat([w] * k, 0)

    new = {}
    for key, w in state.items():
        if key == "head.weight":  # (C, bands, 3, 3): copy g reads its group's bands
            out = w.new_zeros((k * w.shape[0], new_bands) + tuple(w.shape[2:]))
            for b, (g, pos) in enumerate(rows):
                out[g * w.shape[0]:(g + 1) * w.shape[0], b] = w[:, pos].sum(1)
            new[key] = out
        elif key == "tail.2.weight":  # (bands, tail, 1, 1): band b from its copy, the mean of its positions
            out = w.new_zeros((new_bands, k * w.shape[1]) + tuple(w.shape[2:]))
            for b, (g, pos) in enumerate(rows):
                out[b, g * w.shape[1]:(g + 1) * w.shape[1]] = w[pos].mean(0)
            new[key] = out
        elif key == "tail.2.bias":
            new[key] = torch.stack([w[pos].mean() for _, pos in rows])
        elif key.startswith("detail."):  # latent -> bands × 64: band b is the mean of its positions' rows
            x = w.reshape((old_bands, -1) + tuple(w.shape[1:]))
            new[key] = torch.stack([x[pos].mean(0) for _, pos in rows]).reshape((-1,) + tuple(w.shape[1:]))
        elif key == "mix.weight" or key == "mix.bias":  # (levels × up): each level's weights per copy
            levels = w.reshape((-1, state["tail.0.weight"].shape[1]) + tuple(w.shape[1:]))
            new[key] = torch.cat([levels] * k, 1).reshape((-1,) + tuple(w.shape[1:]))
        elif key.startswith("scale_emb."):
            new[key] = w
        elif key == "guide.0.weight" or key == "guide.0.bias":  # all copies read the shared latent
            new[key] = rep(w)
        elif key.endswith(".guide.weight") or key.endswith(".film.weight"):
            new[key] = halves(w, diag if key.endswith(".guide.weight") else rep)
        elif key.endswith(".guide.bias") or key.endswith(".film.bias"):
            new[key] = halves(w, rep)
        elif w.dim() >= 2:  # convolutions inside the trunk, pyramid levels, tail.0
            new[key] = diag(w)
        else:  # their biases
            new[key] = rep(w)
    return new
