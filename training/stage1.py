"""Stage 1: the residual autoencoder (encoder + continuous-scale decoder).

Loss: L1 on the SR, a small L1 on its orthonormal 2-D spectrum (sharper detail without LPIPS),
and a tiny KL of the latent Gaussian against N(0, I). Scales s ~ U(scale_min, scale_max) per batch.
Latent dropout: a share of the samples is decoded with the latent set to zero, so the decoder is
also a plain regression SR model (DESIGN.md) and stays sane on the conditioning net's guess.
"""
from __future__ import annotations

import torch

from engine.models.sampling import LATENT_FACTOR

from .trainer import Stage

KL_WEIGHT = 1e-4
FFT_WEIGHT = 0.05
LATENT_DROPOUT = 0.25


def spectrum_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (torch.fft.rfft2(a, norm="ortho") - torch.fft.rfft2(b, norm="ortho")).abs().mean()


class Stage1(Stage):
    name = "stage1"
    NETWORKS = {"encoder": "encoder", "decoder": "decoder"}

    def setup(self):
        """Start from plain bicubic: the decoder's last layer begins at zero."""
        last = self.nets["decoder"].tail[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)

    def loss(self, pair, gen, ema):
        o = self.settings.options
        mean, logvar = self.nets["encoder"](pair.hr, pair.lr_up)
        eps = torch.randn(mean.shape, generator=gen, device=mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        drop = o.get("latent_dropout", LATENT_DROPOUT)
        if drop > 0:
            keep = torch.rand((z.shape[0], 1, 1, 1), generator=gen, device=z.device) >= drop
            z = z * keep.to(z.dtype)
        sr = self.nets["decoder"](pair.lr, z, pair.inv_scale, *pair.decoder_tables())
        l1 = (sr - pair.hr).abs().mean()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1.0 - logvar).mean()
        fft = spectrum_l1(sr, pair.hr)
        loss = l1 + o.get("kl_weight", KL_WEIGHT) * kl + o.get("fft_weight", FFT_WEIGHT) * fft
        return loss, {"l1": l1.item(), "kl": kl.item()}

    def _decode(self, pair, ema, z):
        return ema["decoder"](pair.lr, z, pair.inv_scale, *pair.decoder_tables())

    def predict(self, pair, ema):
        return self._decode(pair, ema, ema["encoder"](pair.hr, pair.lr_up)[0])

    def reference(self, pair, ema):
        """The decoder with a zero latent: validation shows how much the latent adds (0 dB when the
        latent has collapsed, and the diffusion stages would have nothing to sample)."""
        shape = (pair.lr.shape[0], self.specs["decoder"]["config"]["latent"],
                 pair.hr.shape[-2] // LATENT_FACTOR, pair.hr.shape[-1] // LATENT_FACTOR)
        return self._decode(pair, ema, torch.zeros(shape, device=pair.lr.device))

    def export_card(self):
        return {"kind": "stage1", "latent": self.specs["decoder"]["config"]["latent"]}
