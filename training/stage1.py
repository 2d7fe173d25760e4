"""Stage 1: the residual autoencoder (encoder + continuous-scale decoder).

Posterior: the encoder gives the mean μ of a Gaussian whose standard deviation is ``latent_noise``
times the batch's spread of μ (a fixed signal-to-noise ratio), so z = μ + σ·ε, and its KL against
N(0, I) is 0.5·μ² up to terms without gradient. A learned variance collapsed: the noise swamped μ
while the decoder was young, and the decoder learned to ignore the latent for good.
Loss: L1 on the SR, a small L1 on its orthonormal 2-D spectrum (sharper detail without LPIPS),
and the tiny KL. Scales s ~ U(scale_min, scale_max) per batch.
Latent dropout (off by default): a share of the samples is decoded with the latent set to zero.
``init``: start the decoder from an earlier stage-1 model folder instead of from bicubic.
"""
from __future__ import annotations

import torch

from engine import modelfile
from engine.models.sampling import LATENT_FACTOR

from .errors import TrainingError
from .trainer import Stage

KL_WEIGHT = 1e-4
FFT_WEIGHT = 0.05
LATENT_DROPOUT = 0.0
LATENT_NOISE = 0.1  # σ / spread of μ: 20 dB
STANDARDISE_BATCHES = 8


def spectrum_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (torch.fft.rfft2(a, norm="ortho") - torch.fft.rfft2(b, norm="ortho")).abs().mean()


class Stage1(Stage):
    name = "stage1"
    NETWORKS = {"encoder": "encoder", "decoder": "decoder"}

    def setup(self):
        """The encoder starts as its fixed analysis (learned part at zero), standardised on training
        batches. The decoder starts as plain bicubic (last layer at zero), or from ``init``."""
        enc, dec = self.nets["encoder"], self.nets["decoder"]
        torch.nn.init.zeros_(enc.out.weight)
        torch.nn.init.zeros_(enc.out.bias)
        with torch.no_grad():
            enc.standardise((p.hr, p.lr_up) for p in self.stats_pairs(STANDARDISE_BATCHES))
        init = self.settings.options.get("init")
        if init:
            self.start_decoder_from(init)
        else:
            torch.nn.init.zeros_(dec.tail[-1].weight)
            torch.nn.init.zeros_(dec.tail[-1].bias)

    def start_decoder_from(self, folder: str) -> None:
        """Load the decoder of a stage-1 model folder, with its latent guidance reset: the blocks'
        response to the latent becomes the constant it had for a zero latent, so the start is that
        model's regression, and the guidance is learned anew."""
        card, tensors = modelfile.load(folder)
        if card.get("kind") != "stage1":
            raise TrainingError(f"{folder} is not the output of a stage-1 run")
        dec = self.nets["decoder"]
        dec.load_state_dict(modelfile.network_tensors(tensors, "decoder"))
        with torch.no_grad():
            constant = dec.guide(torch.zeros(1, dec.config["latent"], 1, 1, device=self.device))[0, :, 0, 0]
            for block in dec.blocks:
                block.guide.bias.add_(block.guide.weight[:, :, 0, 0] @ constant)
                block.guide.weight.zero_()

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
        return loss, {"l1": l1.item(), "kl": kl.item()}

    def _decode(self, pair, ema, z):
        return ema["decoder"](pair.lr, z, pair.inv_scale, *pair.decoder_tables())

    def predict(self, pair, ema):
        return self._decode(pair, ema, ema["encoder"](pair.hr, pair.lr_up))

    def reference(self, pair, ema):
        """The decoder with a zero latent (the training average): how much the latent adds."""
        shape = (pair.lr.shape[0], self.specs["decoder"]["config"]["latent"],
                 pair.hr.shape[-2] // LATENT_FACTOR, pair.hr.shape[-1] // LATENT_FACTOR)
        return self._decode(pair, ema, torch.zeros(shape, device=pair.lr.device))

    def export_card(self):
        card = {"kind": "stage1", "latent": self.specs["decoder"]["config"]["latent"]}
        if self.settings.options.get("init"):
            card["init"] = self.settings.options["init"]
        return card
