"""The PatchGAN adversary that stage 1 and stage 2 share: a spectral-norm discriminator from scratch
(engine.models.discriminator) with its own Adam, updated once per training step on HR against the
step's SR, and the hinge losses of training.gan. It is training-only state: checkpoints keep its
weights and optimizer as aux tensors, bundles never ship it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.metrics import LSD_BAND, lattice_bins
from engine.models import PRESETS
from engine.models.discriminator import Discriminator

from . import distributed
from .gan import hinge_discriminator, hinge_generator
from .trainer import load_optimizer, optimizer_tensors

LR = 2e-4
PREFIX = "discriminator."


class Adversary:
    def __init__(self, bands: int, preset: str, device):
        sizes = PRESETS.get(preset, PRESETS["default"])["discriminator"]
        self.net = Discriminator(bands, tuple(sizes["channels"])).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=LR, betas=(0.5, 0.9))
        self._groups = None

    def update(self, pair, fake: torch.Tensor) -> float:
        """One Adam update of the discriminator on HR against ``fake`` (detached); its hinge loss."""
        d = hinge_discriminator(self.net(pair.hr, pair.lr_up), self.net(fake.detach(), pair.lr_up))
        self.opt.zero_grad(set_to_none=True)
        d.backward()
        distributed.average_gradients(self.net.parameters())
        self.opt.step()
        return d.item()

    def generator_loss(self, pair, fake: torch.Tensor) -> torch.Tensor:
        """The generator's hinge loss of ``fake``; the gradient reaches ``fake`` only."""
        self.net.requires_grad_(False)
        try:
            return hinge_generator(self.net(fake, pair.lr_up))
        finally:
            self.net.requires_grad_(True)

    def state(self) -> dict:
        return {"discriminator_param_groups": self.opt.state_dict()["param_groups"]}

    def load_state(self, state: dict) -> None:
        self._groups = state.get("discriminator_param_groups")

    def tensors(self) -> dict:
        out = {PREFIX + k: v for k, v in self.net.state_dict().items()}
        out.update(optimizer_tensors(self.opt.state_dict(), "discriminator_optim"))
        return out

    def load_tensors(self, tensors: dict, optimizer: bool = True) -> bool:
        """Restore what ``tensors`` wrote (checkpoint keys without their "aux." prefix); False when
        they hold no discriminator (a run that switched the GAN on when resumed has none yet)."""
        weights = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        if not weights:
            return False
        self.net.load_state_dict(weights)
        if optimizer and self._groups is not None:
            load_optimizer(self.opt, tensors, "discriminator_optim", self._groups)
        return True


def lr_consistency(sr: torch.Tensor, pair) -> torch.Tensor:
    """L1 between the SR taken back to the LR grid (the antialiased bicubic that made the LR) and
    the LR: what a sample may invent must still average to the pixels that were observed."""
    down = F.interpolate(pair.keep_valid(sr), size=pair.lr.shape[-2:], mode="bicubic", antialias=True,
                         align_corners=False)
    return (down - pair.lr).abs().mean()


def axis_powers(detail: torch.Tensor):
    """engine.metrics.axis_power of an added detail B×C×H×W, differentiable: its band mean, mean removed,
    along each axis (H, then W) averaged over the other, per bin j = 0..n//2; yields (n, power (B, n//2 + 1))."""
    img = detail.mean(1)
    img = img - img.mean((1, 2), keepdim=True)
    for axis in (1, 2):
        n = img.shape[axis]
        yield n, 2.0 * torch.fft.rfft(img, dim=axis).abs().pow(2).mean(3 - axis) / n ** 2


def lattice_power(detail: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """engine.metrics.lattice's two sums per image, differentiable: for an added detail B×C×H×W (its
    band mean), the power at the LR pixel frequency's harmonics and the mean power of their adjacent
    bins, each summed over the harmonics and both axes (``axis_powers``, lattice_bins):
    (peak, background), each (B,); 10·log10(peak / background) is the metric. None where the scale
    has no harmonic (below ×2)."""
    peak = background = None
    for n, power in axis_powers(detail):
        for j, adjacent in lattice_bins(n, scale):
            p, b = power[:, j], power[:, adjacent].mean(1)
            peak, background = (p, b) if peak is None else (peak + p, background + b)
    return None if peak is None else (peak, background)


def lattice_excess(sr: torch.Tensor, regression: torch.Tensor, hr: torch.Tensor, scale: float) -> torch.Tensor:
    """How far the lattice of a sample's added detail (``sr`` − ``regression``) rises above HR's own
    (``hr`` − ``regression``; issue 25's "no lattice": the added detail's peak, against its neighbours,
    no higher than HR's): per image, the power at the LR pixel frequency's harmonics above what HR's
    ratio allows over the sample's own background, max(0, peak − ratio_HR · background), summed over
    the batch and divided by the batch's sum of HR's background. Everything but the sample's peak is
    held fixed, so the gradient only asks the power at the harmonics to fall, and its size is set by
    HR's texture, not by the sample's detail (a ratio of the sample's own powers has a gradient that
    grows without bound as its detail vanishes). About the mean excess of the ratio when the sample
    has HR's amount of detail. The gradient reaches ``sr`` only; 0 below ×2."""
    sums = lattice_power(sr - regression.detach(), scale)
    if sums is None:
        return sr.new_zeros(())
    peak, background = sums
    with torch.no_grad():
        hr_peak, hr_background = lattice_power(hr - regression, scale)
        allowed = hr_peak / hr_background.clamp_min(1e-12) * background
    return F.relu(peak - allowed).sum() / hr_background.sum().clamp_min(1e-12)


SPECTRUM_FLOOR = 0.1  # ε of the detail term: this fraction of HR's mean power over the band, per image


def axis_spectra(detail: torch.Tensor) -> torch.Tensor:
    """``axis_powers`` of an added detail B×C×H×W at the bins from the LSD band's start (engine.metrics
    LSD_BAND, 0.125 cycles/pixel) to Nyquist, the two axes' bins side by side: (B, K)."""
    return torch.cat([power[:, math.ceil(LSD_BAND[0] * n):] for n, power in axis_powers(detail)], 1)


def detail_spectrum_gap(sr: torch.Tensor, regression: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """How far the spectrum of a sample's added detail (``sr`` − ``regression``) is from HR's own
    (``hr`` − ``regression``), at every frequency from 0.125 cycles/pixel to Nyquist: the mean over
    the images and bins (``axis_spectra``) of |ln(P_sr + ε) − ln(P_HR + ε)|, ε = SPECTRUM_FLOOR × HR's
    mean power over the bins, per image (so that the gradient at a bin where the sample has no power
    is bounded by HR's texture, not by the sample's). Where the lattice term asks only the LR pixel
    frequency's harmonics to fall, this asks the whole spectrum of what a sample adds to be HR's: no
    peak, and no cliff at 1/scale (docs/spectrum.png). The gradient reaches ``sr`` only."""
    p = axis_spectra(sr - regression.detach())
    with torch.no_grad():
        target = axis_spectra(hr - regression)
        eps = SPECTRUM_FLOOR * target.mean(1, keepdim=True).clamp_min(1e-12)
    return ((p + eps).log() - (target + eps).log()).abs().mean()
