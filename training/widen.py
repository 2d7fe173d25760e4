"""A decoder with a wider or deeper LR trunk started from a narrower or shallower one, so that it decodes
exactly as that one did (issue 25, item 4: the faithful end's capacity, within the cost limits).

The trunk's channels (engine.models.decoder: the head, the latent guidance, the guided blocks with
their FiLM, body_out; the pyramid levels read them) gain new channels. The old channels keep their
filters and read nothing new: the columns of a layer that read the new channels are zero, so the old
channels, and all that reads them, compute what they computed. The new channels' own filters (their
rows) are the fresh network's random start scaled by NEW_GAIN, so they carry signal from the first
step, and the zero columns that read them get a gradient and are learned. At the start the output is
the narrower decoder's, to the rounding of the floats.

A deeper trunk gains guided blocks after the start's (stage 1's --blocks). The blocks are residual, so a
new block whose second convolution is zero passes its input through: the deeper decoder decodes as the
start did, exactly. That convolution gets a gradient from the first step, and the block's first
convolution, guidance and FiLM keep their fresh start and are learned once it has moved.
"""
from __future__ import annotations

import torch

from .errors import TrainingError

# the trunk's [scale; shift] layers: their rows are two halves of `channels` each
HALVED = (".guide.", ".film.")


# The new channels' rows: the fresh start scaled down, so that the new channels' activations are small.
# The columns that read them start at zero and Adam moves every weight by about the learning rate
# whatever its gradient's size, so their first steps change the output in proportion to those
# activations: at the fresh start's full size (gain 1) stage 1 at lr 1e-3 fell from +3.83 dB over
# bicubic on its validation crops at step 250 to +2.01 at step 500 (the 48-channel bundled decoder
# widened to 96).
NEW_GAIN = 0.1


def trunk_channels(state: dict) -> int:
    return state["head.weight"].shape[0]


def trunk_blocks(state: dict) -> int:
    """The guided blocks of a decoder's state."""
    return len({key.split(".")[1] for key in state if key.startswith("blocks.")})


def deepen_trunk(net: torch.nn.Module, start_blocks: int) -> None:
    """The blocks of ``net`` (a decoder) after the start's first ``start_blocks`` made identities."""
    if len(net.blocks) < start_blocks:
        raise TrainingError(f"the start decoder's trunk has {start_blocks} guided blocks and this run's "
                            f"{len(net.blocks)}: a trunk only deepens (stage 1's --blocks {start_blocks} or more)")
    with torch.no_grad():
        for block in net.blocks[start_blocks:]:
            torch.nn.init.zeros_(block.conv2.weight)
            torch.nn.init.zeros_(block.conv2.bias)


def reads_trunk(key: str) -> bool:
    """A weight whose input axis (dim 1) is the trunk's channels."""
    if not key.endswith(".weight"):
        return False
    return key == "guide.2.weight" or key == "body_out.weight" or key.startswith("levels.") or (
        key.startswith("blocks.") and not key.endswith(".film.weight"))


def writes_trunk(key: str) -> bool:
    """A weight or bias whose output axis (dim 0) is the trunk's channels (or two halves of them)."""
    return key.startswith(("head.", "guide.", "blocks.", "body_out."))


def widened_shape(key: str, shape: torch.Size, old: int, new: int) -> torch.Size:
    shape = list(shape)
    if writes_trunk(key):
        shape[0] = shape[0] // old * new
    if reads_trunk(key):
        shape[1] = shape[1] // old * new
    return torch.Size(shape)


def widen_trunk(state: dict, fresh: dict) -> dict:
    """``state`` (a decoder's) in the shapes of ``fresh`` (a fresh decoder's state with a wider trunk, the
    same bands, latent, pyramid and tail): the old rows and columns where they were, zero columns
    where old rows read new channels, and ``fresh``'s values × NEW_GAIN in the new channels' rows."""
    old, new = trunk_channels(state), trunk_channels(fresh)
    if new < old:
        raise TrainingError(f"the start decoder's trunk has {old} channels and this run's {new}: a trunk only widens "
                            f"(stage 1's --channels {old} or more)")
    out = {}
    for key, w in state.items():
        if key not in fresh or fresh[key].shape != widened_shape(key, w.shape, old, new):
            out[key] = w  # not the trunk's to widen (another latent size): load_adapted leaves its start
            continue
        target = fresh[key].clone()
        if writes_trunk(key):  # the new rows scaled, the old rows (of each half) where they were
            target *= NEW_GAIN
            halves = 2 if key.startswith("blocks.") and any(h in key for h in HALVED) else 1
            parts = [(h * new, w[h * old:(h + 1) * old]) for h in range(halves)]
        else:
            parts = [(0, w)]
        for start, part in parts:
            rows = slice(start, start + part.shape[0])
            if reads_trunk(key):  # old rows read the new channels through zeros
                target[rows] = 0
                target[rows, :old] = part
            else:
                target[rows] = part
        out[key] = target
    return out
