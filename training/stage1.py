"""Stage 1: the residual autoencoder (encoder + continuous-scale decoder).

Posterior: the encoder gives the mean μ of a Gaussian whose standard deviation is ``latent_noise``
times the batch's standard deviation of μ (a fixed signal-to-noise ratio, whatever the scale of μ),
so z = μ + σ·ε and its KL against N(0, I) is 0.5·μ² up to terms without gradient. A learned or a
fixed absolute variance let the noise swamp μ while the decoder was still untrained (a new encoder's
μ is about 0.006): the decoder then learned to ignore the latent for good, and the diffusion stages
had nothing to sample.
Loss: L1 on the SR, a small L1 on its orthonormal 2-D spectrum (sharper detail without LPIPS),
and the tiny KL. Scales s ~ U(scale_min, scale_max) per batch.
Latent dropout: a share of the samples is decoded with the latent set to zero, so the decoder stays
a sane regression model when the latent carries little (DESIGN.md).
"""
from __future__ import annotations

import torch

from .trainer import Stage

KL_WEIGHT = 1e-4
FFT_WEIGHT = 0.05
LATENT_DROPOUT = 0.1
LATENT_NOISE = 0.1  # σ / std(μ): 20 dB
INIT_BATCHES = 2


def spectrum_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (torch.fft.rfft2(a, norm="ortho") - torch.fft.rfft2(b, norm="ortho")).abs().mean()


class Stage1(Stage):
    name = "stage1"
    NETWORKS = {"encoder": "encoder", "decoder": "decoder"}

    def setup(self):
        """Start from plain bicubic (the decoder's last layer begins at zero) and from a latent of unit
        spread: a new encoder's output is about 0.006, too faint for the decoder to start using it."""
        last = self.nets["decoder"].tail[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        for block in self.nets["decoder"].blocks:
            torch.nn.init.zeros_(block.guide.weight)
            torch.nn.init.zeros_(block.guide.bias)
        enc = self.nets["encoder"]
        with torch.no_grad():
            spread = torch.cat([enc(p.hr, p.lr_up).flatten() for p in self.stats_pairs(INIT_BATCHES)]).std()
            enc.out.weight.div_(spread.clamp_min(1e-6))
            enc.out.bias.div_(spread.clamp_min(1e-6))

    def loss(self, pair, gen, ema):
        o = self.settings.options
        mean = self.nets["encoder"](pair.hr, pair.lr_up)
        sigma = o.get("latent_noise", LATENT_NOISE) * mean.detach().std()
        z = mean + sigma * torch.randn(mean.shape, generator=gen, device=mean.device)
        drop = o.get("latent_dropout", LATENT_DROPOUT)
        if drop > 0:
            keep = torch.rand((z.shape[0], 1, 1, 1), generator=gen, device=z.device) >= drop
            z = z * keep.to(z.dtype)
        sr = self.nets["decoder"](pair.lr, z, pair.inv_scale, *pair.decoder_tables())
        l1 = (sr - pair.hr).abs().mean()
        kl = 0.5 * (mean ** 2).mean()
        fft = spectrum_l1(sr, pair.hr)
        loss = l1 + o.get("kl_weight", KL_WEIGHT) * kl + o.get("fft_weight", FFT_WEIGHT) * fft
        return loss, {"l1": l1.item(), "latent_std": mean.detach().std().item()}

    def _decode(self, pair, ema, z):
        return ema["decoder"](pair.lr, z, pair.inv_scale, *pair.decoder_tables())

    def predict(self, pair, ema):
        return self._decode(pair, ema, ema["encoder"](pair.hr, pair.lr_up))

    def reference(self, pair, ema):
        """The decoder with a zero latent: how much the latent adds."""
        shape = (pair.lr.shape[0], self.specs["decoder"]["config"]["latent"], pair.hr.shape[-2] // 8, pair.hr.shape[-1] // 8)
        return self._decode(pair, ema, torch.zeros(shape, device=pair.lr.device))

    def export_card(self):
        return {"kind": "stage1", "latent": self.specs["decoder"]["config"]["latent"]}
