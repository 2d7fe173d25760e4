"""Continuous-scale decoder (stage 1): LR + latent -> HR at any output sample positions.

1. An LR-resolution feature branch of residual blocks, each modulated (FiLM) by guidance maps
   from the latent, bilinearly resampled to the LR pixels, and by an embedding of 1/scale.
2. A scale-aware upsampler: sub-pixel heads make a small pyramid at ×1, ×2, ×4 and ×8 the LR
   resolution; each level is bilinearly gathered at the exact output positions and the levels are
   mixed with per-channel weights predicted from 1/scale, then a 1×1 tail maps to the bands.
3. A bicubic skip (Keys a = -0.5, the same taps as engine.resample) is added.
4. With ``detail``, a path from the latent straight to the output resolution: a 3×3 conv on the
   latent makes 8×8 output pixels per cell (pixel shuffle), which are gathered at the output pixels
   by the detail row of the output tables and added. The latent cells are 8×8 *global* output pixels
   (engine.models.sampling), so this path is exact at every scale and seamless across tiles. Stage 1
   starts it as the synthesis of a PCA of the residual (training/stage1.py), the transpose of the
   encoder's analysis, so that the true latent decodes to the residual's PCA projection from step 0.
   With ``detail_flat`` (issue 25), the path's response to a latent that is the same in every cell
   is flat within the cell: the weights are used less, per band, sub-pixel and latent channel, the
   excess of their sum over the 3×3 taps above its mean over the 64 sub-pixels (spread over the
   taps), and the bias is its mean over the sub-pixels. So the 8×8 pattern of a cell is driven by how
   the latent departs from its 3×3 neighbourhood, and an offset of the latent shared by a region
   (what a one-step sample adds beside real detail) shifts the level there instead of painting an
   8×8 lattice over it (docs/MODELS.md, "The lattice"). The same conv and receptive field.
5. With ``synth`` = F > 0 (issue 25), a non-linear synthesis at the output resolution: a 1×1 conv on
   the latent makes F features for each of a cell's 8×8 output pixels (pixel shuffle), gathered at
   the output pixels by the detail row; beside the pyramid's mixed features there, they go through
   two 3×3 convolutions over the output pixels with a SiLU between, and the result is added. Its
   convolutions cross the cells' and the LR pixels' edges, so what it adds is not an 8×8 block or a
   pattern spread from one LR pixel; its last conv starts at zero (a decoder that gains it starts as
   it was). It reaches 2 output pixels further (engine.reach), and it has no pooling or
   normalisation over space; a tile runs it on its output grid widened by those 2 pixels within the
   whole output and drops them (engine.reach.output_margin), so tiles stay exact.
6. With ``gate`` (issue 25), a gain per output pixel and band on what the latent adds at the output
   resolution: the detail path's and the synthesis's outputs are multiplied by softplus(g)/ln 2, where
   g is a 3×3 conv over the pyramid's mixed features at the output pixels. The detail path's 8×8
   blocks become a pattern that the LR's features set at every output pixel, so a sample's detail,
   and the spread of several samples, can follow the edges inside a cell instead of filling it evenly.
   Its conv starts at zero, a gain of 1 (a decoder that gains it starts as it was). It reads 1 output
   pixel further (engine.reach.GATE_REACH), within the synthesis's margin when the decoder has both.
All resampling is by index/weight tables (engine.models.sampling), so it exports to ONNX. The pyramid
runs channels last, laid out for ONNX Runtime's CPU kernels (docs/MODELS.md, "The exported layout"):
the exported graph is this forward as it is.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Embedding, resample, resample2d
from .sampling import DETAIL_ROW, LATENT_FACTOR, LEVELS


DETAIL_INIT = 0.01  # spread of a fresh detail path's bias, in reflectance
LN2 = math.log(2.0)  # softplus(0): the gate's logit 0 is a gain of 1
GATED = ("synth", "detail")  # the parts the gate scales (module notes, 6.); it needs one of them


def gated(config: dict) -> bool:
    """Whether a decoder with this config has a part the gate scales (GATED)."""
    return any(config.get(name) for name in GATED)


def cell_pixels(cells, out_y_idx, out_y_w, out_x_idx, out_x_w) -> torch.Tensor:
    """Per-cell maps of C·8·8 channels (B, C·64, h_lat, w_lat) as C channels at the output pixels,
    channels last (B, n_rows, n_cols, C): pixel shuffle, then the detail row of the output tables."""
    d = F.pixel_shuffle(cells, LATENT_FACTOR).permute(0, 2, 3, 1)
    row = slice(DETAIL_ROW, DETAIL_ROW + 1)
    return resample(resample(d, out_y_idx[row], out_y_w[row], 1), out_x_idx[row], out_x_w[row], 2)


class GuidedBlock(nn.Module):
    """Residual block modulated by latent guidance (per pixel) and the scale embedding (per image)."""

    def __init__(self, ch: int, guide_ch: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.guide = nn.Conv2d(guide_ch, 2 * ch, 1)
        self.film = nn.Linear(emb_dim, 2 * ch)

    def forward(self, x: torch.Tensor, guide: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x))
        g_scale, g_shift = self.guide(guide).chunk(2, dim=1)
        e_scale, e_shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + g_scale + e_scale) + g_shift + e_shift
        return x + self.conv2(F.silu(h))


class Decoder(nn.Module):
    def __init__(self, bands: int = 3, latent: int = 4, channels: int = 48, blocks: int = 4,
                 up_channels: int = 8, tail_channels: int = 16, emb_dim: int = 64, detail: bool = False,
                 detail_flat: bool = False, synth: int = 0, gate: bool = False):
        super().__init__()
        self.config = {"bands": bands, "latent": latent, "channels": channels, "blocks": blocks,
                       "up_channels": up_channels, "tail_channels": tail_channels, "emb_dim": emb_dim}
        if detail:  # cards written before the detail path lack the key
            self.config["detail"] = True
        if detail_flat:  # cards written before it lack the key
            if not detail:
                raise ValueError("detail_flat needs the detail path (detail: true)")
            self.config["detail_flat"] = True
        if synth:  # cards written before it lack the key
            self.config["synth"] = int(synth)
        if gate:  # cards written before it lack the key
            if not gated(self.config):
                raise ValueError("the gate needs what it scales: the detail path or the synthesis")
            self.config["gate"] = True
        self.detail_flat = detail_flat
        self.detail = nn.Conv2d(latent, bands * LATENT_FACTOR ** 2, 3, padding=1) if detail else None
        if detail:  # fresh, it reads nothing (stage 1 sets it by PCA) and adds a small fixed 8×8 pattern per cell
            nn.init.zeros_(self.detail.weight)
            nn.init.normal_(self.detail.bias, std=DETAIL_INIT)
        self.up_channels = up_channels
        self.scale_emb = Embedding(1, emb_dim)
        self.guide = nn.Sequential(nn.Conv2d(latent, channels, 3, padding=1), nn.SiLU(),
                                   nn.Conv2d(channels, channels, 3, padding=1))
        self.head = nn.Conv2d(bands, channels, 3, padding=1)
        self.blocks = nn.ModuleList(GuidedBlock(channels, channels, emb_dim) for _ in range(blocks))
        self.body_out = nn.Conv2d(channels, channels, 3, padding=1)
        self.levels = nn.ModuleList(nn.Conv2d(channels, up_channels * k * k, 1) for k in LEVELS)
        self.mix = nn.Linear(emb_dim, len(LEVELS) * up_channels)
        self.tail = nn.Sequential(nn.Conv2d(up_channels, tail_channels, 1), nn.SiLU(), nn.Conv2d(tail_channels, bands, 1))
        self.synth_cells = nn.Conv2d(latent, synth * LATENT_FACTOR ** 2, 1) if synth else None
        self.synth = nn.Sequential(nn.Conv2d(synth + up_channels, synth, 3, padding=1), nn.SiLU(),
                                   nn.Conv2d(synth, bands, 3, padding=1)) if synth else None
        if synth:
            nn.init.zeros_(self.synth[-1].weight)
            nn.init.zeros_(self.synth[-1].bias)
        self.gate = nn.Conv2d(up_channels, bands, 3, padding=1) if gate else None
        if gate:  # a gain of 1: a decoder that gains it starts as it was
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    def features(self, lr, z, emb, lat_y_idx, lat_y_w, lat_x_idx, lat_x_w) -> torch.Tensor:
        """The LR-resolution feature branch (B, channels, h, w), guided by the latent."""
        guide = resample2d(self.guide(z), lat_y_idx, lat_y_w, lat_x_idx, lat_x_w)
        feat = self.head(lr)
        x = feat
        for block in self.blocks:
            x = block(x, guide, emb)
        return self.body_out(x) + feat

    def level(self, i: int, xt: torch.Tensor) -> torch.Tensor:
        """Pyramid level i of the features ``xt`` (B, h, 1, w, ch): the 1×1 head and pixel shuffle as one
        broadcast MatMul, (B, h, 1, w, ch) @ (k, ch, k·C), whose result already is the shuffled map,
        channels last: (B, h·k, w·k, C)."""
        k, head, c = LEVELS[i], self.levels[i], self.up_channels
        ch = head.weight.shape[1]
        # head channel c·k²+sy·k+sx (pixel_shuffle's order) -> weight [sy, ch, sx·C + c]
        weight = head.weight.reshape(c, k, k, ch).permute(1, 3, 2, 0).reshape(k, ch, k * c)
        bias = head.bias.reshape(c, k, k).permute(1, 2, 0).reshape(k, 1, k * c)
        p = torch.matmul(xt, weight) + bias  # (B, h, k, w, k·C)
        return p.flatten(1, 2).unflatten(3, (k, c)).flatten(2, 3)

    def pyramid(self, x, emb, out_y_idx, out_y_w, out_x_idx, out_x_w) -> torch.Tensor:
        """The levels gathered at the output positions and mixed by the scale's weights: (B, n_rows,
        n_cols, up_channels), channels last (gathers move whole pixels, not single floats)."""
        mix = torch.softmax(self.mix(emb).reshape(-1, len(LEVELS), self.up_channels), dim=1)
        xt = x.permute(0, 2, 3, 1).unsqueeze(2)
        acc = None
        for i in range(len(LEVELS)):
            rows = slice(2 * i, 2 * i + 2)
            # channels last, both gathers move whole pixels: rows first, the level's map is often the larger
            p = resample(resample(self.level(i, xt), out_y_idx[rows], out_y_w[rows], 1), out_x_idx[rows], out_x_w[rows], 2)
            p = p * mix[:, i, None, None, :]
            acc = p if acc is None else acc + p
        return acc

    def tail_map(self, acc: torch.Tensor) -> torch.Tensor:
        """The 1×1 tail on the pyramid's features, channels last: (B, n_rows, n_cols, bands)."""
        t0, t2 = self.tail[0], self.tail[2]
        return F.linear(F.silu(F.linear(acc, t0.weight.flatten(1), t0.bias)), t2.weight.flatten(1), t2.bias)

    def set_detail(self, mean: torch.Tensor, components: torch.Tensor, std: torch.Tensor) -> None:
        """The detail path as the PCA synthesis Σ_k z_k·std_k·component_k + mean (per 8×8 block, the
        centre tap only): the inverse of Encoder.set_analysis on the PCA subspace."""
        with torch.no_grad():
            self.detail.weight.zero_()
            self.detail.weight[:, :, 1, 1] = (components * std[:, None]).T
            self.detail.bias.copy_(mean)

    def flat_detail(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The detail path's weight and bias with ``detail_flat``: a latent that is the same in every
        cell makes the same value at the 64 sub-pixels of each band (module notes)."""
        w, k = self.detail.weight, LATENT_FACTOR ** 2
        sums = w.sum((2, 3)).unflatten(0, (-1, k))  # (bands, sub-pixels, latent): the response to a uniform latent
        excess = (sums - sums.mean(1, keepdim=True)).flatten(0, 1)
        bias = self.detail.bias.unflatten(0, (-1, k)).mean(1, keepdim=True).expand(-1, k).flatten()
        return w - excess[:, :, None, None] / (w.shape[2] * w.shape[3]), bias

    def detail_map(self, z, out_y_idx, out_y_w, out_x_idx, out_x_w) -> torch.Tensor:
        """The detail path at the output pixels, channels last (B, n_rows, n_cols, bands)."""
        cells = F.conv2d(z, *self.flat_detail(), padding=1) if self.detail_flat else self.detail(z)
        return cell_pixels(cells, out_y_idx, out_y_w, out_x_idx, out_x_w)

    def synth_map(self, z, acc, out_y_idx, out_y_w, out_x_idx, out_x_w) -> torch.Tensor:
        """The output-resolution synthesis (module notes, 5.) from the latent and the pyramid's features
        ``acc``, channels last (B, n_rows, n_cols, bands)."""
        f = cell_pixels(self.synth_cells(z), out_y_idx, out_y_w, out_x_idx, out_x_w)
        return self.synth(torch.cat([f, acc], 3).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def gain(self, acc: torch.Tensor) -> torch.Tensor:
        """The gate's gain (module notes, 6.) from the pyramid's features ``acc``, channels last
        (B, n_rows, n_cols, bands)."""
        return (F.softplus(self.gate(acc.permute(0, 3, 1, 2))) / LN2).permute(0, 2, 3, 1)

    def parts(self, lr, z, inv_scale, out_y_idx, out_y_w, out_x_idx, out_x_w,
              lat_y_idx, lat_y_w, lat_x_idx, lat_x_w) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """What each part adds to the bicubic skip, channels last (B, n_rows, n_cols, bands), in the
        order forward sums them: the LR branch through the pyramid and tail ("tail"), the synthesis
        and the detail path when the decoder has them; and the pyramid's features the synthesis read."""
        emb = self.scale_emb(inv_scale)
        x = self.features(lr, z, emb, lat_y_idx, lat_y_w, lat_x_idx, lat_x_w)
        acc = self.pyramid(x, emb, out_y_idx, out_y_w, out_x_idx, out_x_w)
        out = {"tail": self.tail_map(acc)}
        if self.synth is not None:
            out["synth"] = self.synth_map(z, acc, out_y_idx, out_y_w, out_x_idx, out_x_w)
        if self.detail is not None:
            out["detail"] = self.detail_map(z, out_y_idx, out_y_w, out_x_idx, out_x_w)
        if self.gate is not None:
            gain = self.gain(acc)
            out.update({name: out[name] * gain for name in GATED if name in out})
        return out, acc

    def forward(self, lr, z, inv_scale, out_y_idx, out_y_w, out_x_idx, out_x_w,
                lat_y_idx, lat_y_w, lat_x_idx, lat_x_w) -> torch.Tensor:
        """lr (B, bands, h, w); z (B, latent, h_lat, w_lat); inv_scale (B, 1); tables from
        sampling.Plan -> (B, bands, n_rows, n_cols)."""
        parts, _ = self.parts(lr, z, inv_scale, out_y_idx, out_y_w, out_x_idx, out_x_w,
                              lat_y_idx, lat_y_w, lat_x_idx, lat_x_w)
        out = None
        for part in parts.values():
            out = part if out is None else out + part
        cubic = slice(2 * len(LEVELS), 2 * len(LEVELS) + 4)
        skip = resample2d(lr, out_y_idx[cubic], out_y_w[cubic], out_x_idx[cubic], out_x_w[cubic])
        return skip + out.permute(0, 3, 1, 2)
