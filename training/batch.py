"""LR/HR training pairs: bicubic-antialiased LR of an HR batch, and the sampling tables."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.grid import Grid, centres
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

    def decoder_tables(self) -> tuple:
        t = self.tables
        return (t["out_y_idx"], t["out_y_w"], t["out_x_idx"], t["out_x_w"],
                t["lat_y_idx"], t["lat_y_w"], t["lat_x_idx"], t["lat_x_w"])

    def hr_tables(self) -> tuple:
        t = self.tables
        return t["hr_y_idx"], t["hr_y_w"], t["hr_x_idx"], t["hr_x_w"]


def make_pair(hr: torch.Tensor, scale: float, multiple: int) -> Pair:
    """LR = antialiased bicubic of ``hr`` at round(H/scale)×round(W/scale), clipped to [0, 1]. HR
    sides must be multiples of 8·multiple so that the latent grid covers HR exactly."""
    H, W = hr.shape[-2:]
    if H % (LATENT_FACTOR * multiple) or W % (LATENT_FACTOR * multiple):
        raise ValueError(f"HR size {H}×{W} is not a multiple of {LATENT_FACTOR * multiple}")
    h, w = max(1, round(H / scale)), max(1, round(W / scale))
    lr = F.interpolate(hr, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    grid = Grid(centres(h, H, 0, H), centres(w, W, 0, W), scale=H / h)
    tables = Plan.build(h, w, grid, multiple).tensors(hr.device)
    lr_up = resample2d(lr, tables["hr_y_idx"], tables["hr_y_w"], tables["hr_x_idx"], tables["hr_x_w"])
    inv = torch.full((hr.shape[0], 1), h / H, device=hr.device)
    return Pair(hr, lr, lr_up, inv, tables, H / h)
