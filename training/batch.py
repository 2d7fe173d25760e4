"""LR/HR training pairs: bicubic-antialiased LR of an HR batch, and the sampling tables.

NaN pixels in an HR batch (nodata of a training raster) are filled from their valid neighbours by
inference's rule (engine.render.fill_invalid), deeper (WINDOW_FILL_DEPTH), before the LR is made, and the pair's ``valid`` mask keeps them out of
the losses (``keep_valid`` for image losses, ``cell_valid`` for latent ones)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.grid import Grid, centres
from engine.models.inputs import ConditionInputs, DecoderInputs
from engine.models.layers import resample2d
from engine.models.sampling import LATENT_FACTOR, Plan


@dataclass
class Pair:
    hr: torch.Tensor  # B×C×H×W
    lr: torch.Tensor  # B×C×h×w
    lr_up: torch.Tensor  # the bicubic LR at the HR pixels (Keys a = -0.5)
    inv_scale: torch.Tensor  # B×1, h/H
    tables: dict  # sampling.Plan tensors
    scale: float
    valid: torch.Tensor | None = None  # B×1×H×W, 1 where every band of the HR pixel holds data; None: all

    def keep_valid(self, sr: torch.Tensor) -> torch.Tensor:
        """``sr`` with HR's (filled) values at nodata pixels: they add nothing to a loss against HR
        and send no gradient back."""
        return sr if self.valid is None else torch.where(self.valid > 0, sr, self.hr)

    def cell_valid(self) -> torch.Tensor | None:
        """B×1×(H/8)×(W/8): 1 for latent cells whose 8×8 HR pixels all hold data; None: all."""
        if self.valid is None:
            return None
        return -F.max_pool2d(-self.valid, LATENT_FACTOR)

    @property
    def arrays(self) -> dict:
        """The batch as a tile's inputs by name (lr, inv_scale and the tables), as engine.latent.run_tile
        takes them."""
        return dict(self.tables, lr=self.lr, inv_scale=self.inv_scale)

    def condition_inputs(self) -> ConditionInputs:
        return ConditionInputs.of(self.arrays)

    def decoder_inputs(self, z: torch.Tensor) -> DecoderInputs:
        """The decoder's inputs with the (unnormalised) latent ``z``."""
        return DecoderInputs.of(self.arrays, z=z)

    def latent_shape(self, channels: int) -> tuple[int, ...]:
        """The shape of a latent of ``channels`` channels over the batch: one cell per 8×8 HR pixels."""
        return (self.hr.shape[0], channels, self.hr.shape[-2] // LATENT_FACTOR, self.hr.shape[-1] // LATENT_FACTOR)


# How deep a window's nodata is filled from its neighbours. Not engine.render.FILL_ITERATIONS (2):
# inference's depth is part of every tile's halo, so that tiles agree, and beyond it the band's
# whole-raster fill value takes over; a training window is read whole, with no tiles to agree, so
# it fills deeper by the same 3×3 rule before the window's own valid mean takes over.
WINDOW_FILL_DEPTH = 16


def fill_nodata(hr: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """NaN-free ``hr`` (B×C×H×W): pixels not ``valid`` (B×1×H×W) take the mean of their valid 3×3
    neighbours, WINDOW_FILL_DEPTH deep (engine.render.fill_invalid's rule, which stops at 2); what
    is still empty then takes the image's valid mean per band."""
    x = torch.where(valid > 0, hr, torch.zeros_like(hr))
    known = valid.clone()
    ones = torch.ones(hr.shape[1], 1, 3, 3, dtype=hr.dtype, device=hr.device)
    for _ in range(WINDOW_FILL_DEPTH):
        if bool(known.all()):
            break
        total = F.conv2d(x * known, ones, padding=1, groups=hr.shape[1])
        count = F.conv2d(known, ones[:1], padding=1)
        grow = (known == 0) & (count > 0)
        x = torch.where(grow, total / count.clamp_min(1), x)
        known = torch.maximum(known, grow.to(known.dtype))
    mean = (x * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1)
    return torch.where(known > 0, x, mean)


def make_pair(hr: torch.Tensor, scale: float, multiple: int) -> Pair:
    """LR = antialiased bicubic of ``hr`` at round(H/scale)×round(W/scale), clipped to [0, 1]. HR
    sides must be multiples of 8·multiple so that the latent grid covers HR exactly. NaN pixels of
    ``hr`` are nodata: filled (fill_nodata) and marked in the pair's ``valid`` mask."""
    valid = None
    nan = torch.isnan(hr)
    if bool(nan.any()):
        valid = (~nan.any(1, keepdim=True)).to(hr.dtype)
        hr = fill_nodata(hr, valid)
    H, W = hr.shape[-2:]
    if H % (LATENT_FACTOR * multiple) or W % (LATENT_FACTOR * multiple):
        raise ValueError(f"HR size {H}×{W} is not a multiple of {LATENT_FACTOR * multiple}")
    h, w = max(1, round(H / scale)), max(1, round(W / scale))
    lr = F.interpolate(hr, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    grid = Grid(centres(h, H, 0, H), centres(w, W, 0, W), scale=H / h)
    tables = Plan.build(h, w, grid, multiple).tensors(hr.device)
    lr_up = resample2d(lr, tables["hr_y_idx"], tables["hr_y_w"], tables["hr_x_idx"], tables["hr_x_w"])
    inv = torch.full((hr.shape[0], 1), h / H, device=hr.device)
    return Pair(hr, lr, lr_up, inv, tables, H / h, valid)
