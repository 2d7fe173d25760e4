"""How far into the LR a learned method's output pixel sees: the halo the tiler gives each tile, so
that a tiled run equals an untiled one (pure Python, from a model card's network configs).

An output pixel reads, along each axis:
- the LR directly, through the decoder's feature branch (its head, two 3×3 convolutions per block
  and body_out, at LR resolution), one more pixel through the pyramid's bilinear taps and one for
  where in its LR pixel the output pixel falls: ``decoder_reach`` LR pixels;
- the latent, through the decoder's guide (two 3×3 convolutions on the latent, then bilinear to the
  LR pixels) or its detail path (one 3×3 convolution): ``GUIDE_CELLS`` cells. A cell is 8 output
  pixels, 8/scale LR pixels.

What the latent reads is where the exact receptive field stops being useful. The conditioning net
sees 5 cells (two 3×3 convs per block and its out conv) and each call of the bundled 3-level
denoiser UNet 38 more (the union over its skips and its down/up path, worst phase); E²DiffSR's 4
steps compound them to 157 cells, more than 600 LR pixels at ×2. But their weights fall off fast.
Measured by truncating a tile at a distance h from the pixels compared (docs/MODELS.md, "Tiles"),
the regression latent changes the output by less than 0.01 DN at h = 12 LR pixels, but a sampled
latent (D > 0) by up to 2–3 DN at h = 16, and by less than 0.2 DN once h covers the decoder's reach,
the guide's 3 cells and about 4 more. Through the tiler, on a 512² mosaic of four UC Merced images,
those 4 cells still left 2 DN at ×3.3 and 5 gave 1 DN; ``SAMPLE_EDGE_CELLS`` keeps one more. How far
the sampled latent carries a tile's edge is a property of the trained denoiser and of how often it runs:
the fifth 2026-12-05 bundle's E²DiffSR needs 9 cells at 1 step, 18 at 2 and 14 at 4. So training
measures it for each bundle, method and step count (training.reach) and the card records it
(``sample_edge``); ``SAMPLE_EDGE_CELLS`` is the edge of a card written before that. The halo is therefore the exact
reach of the decoder plus, when the method samples, the guide's exact reach and the sampled latent's
edge, in cells of the run's scale (``method_halo``).

The decoder's output-resolution synthesis and its gate also read their neighbours among the output
pixels: a tile makes ``output_margin`` more output pixels on each side, within the whole output, and
drops them.
"""
from __future__ import annotations

import math

from .models.sampling import LATENT_FACTOR

SAMPLE_EDGE_CELLS = 6  # a card without a measured edge (engine.card.MethodSpec.edge): the edge measured before cards had one
SYNTH_REACH = 2  # the decoder's output-resolution synthesis: two 3×3 convs, 2 output pixels (at most 2 LR pixels, at ×1)
GATE_REACH = 1  # the decoder's gate: one 3×3 conv over the output pixels
GUIDE_CELLS = 3  # the decoder's guide: two 3×3 convs on the latent, then bilinear to the LR pixels (the detail path: one conv)


def decoder_reach(config: dict) -> int:
    """LR pixels an output pixel reads through the feature branch of a decoder with this config: its
    head, two 3×3 convs per guided block and body_out, one pixel of the pyramid's bilinear taps and
    one for the output pixel's place in its LR pixel (the bicubic skip's 2 pixels are within it), and
    the output pixels that its synthesis and gate read (``output_margin``, as many LR pixels at most)."""
    return 1 + 2 * int(config["blocks"]) + 1 + 1 + 1 + output_margin(config)


def output_margin(config: dict) -> int:
    """Output pixels on each side of a tile's output that a decoder with this config must also make:
    the synthesis's 3×3 convolutions (SYNTH_REACH) and the gate's (GATE_REACH), side by side on the
    pyramid's features, read their neighbours at the output resolution, so a tile runs on its output
    grid widened by the farther of them within the whole output and crops them
    (engine.grid.Grid.widened), and its edge pixels read what they read in a whole run."""
    return max(SYNTH_REACH if config.get("synth") else 0, GATE_REACH if config.get("gate") else 0)


def method_halo(decoder: dict, scale: float, edge: int | None) -> int:
    """The halo, in LR pixels, that a learned method whose decoder has the config ``decoder`` needs
    around the output it is trusted on at ``scale``: the decoder's reach and, when the method samples
    a latent (D > 0), the guide's reach and ``edge``, the measured edge of the sampled latent (None: it
    does not sample), in cells of 8/scale LR pixels (module notes)."""
    halo = decoder_reach(decoder)
    if edge is not None:
        halo += (GUIDE_CELLS + edge) * LATENT_FACTOR / scale
    return math.ceil(halo - 1e-9)
