"""Stage 1: the residual autoencoder (encoder + continuous-scale decoder).

Start: a PCA of the residual's 8×8 blocks on training batches sets the encoder's linear analysis
(unit-variance code) and the decoder's detail path (its synthesis), so decoding the true latent
gives bicubic + the residual's PCA projection from step 0: the latent is alive before training.

Posterior: the encoder gives the mean μ of a Gaussian whose standard deviation is ``latent_noise``
times the batch's spread of μ (a fixed signal-to-noise ratio), so z = μ + σ·ε, and its KL against
N(0, I) is 0.5·μ² up to terms without gradient. A learned variance collapsed: the noise swamped μ
while the decoder was young, and the decoder learned to ignore the latent for good.
Loss: L1 on the SR, a small L1 on its orthonormal 2-D spectrum (sharper detail without LPIPS),
and the tiny KL; from step ``gan_start`` on, plus ``gan_weight`` × the hinge loss of a small
spectral-norm PatchGAN trained from scratch beside it (its own Adam, one update per step, on the
same batch). Scales s ~ U(scale_min, scale_max) per batch.
Latent dropout (off in the base options, on in the recipe: training.recipe): a share of the samples is decoded with the latent set to zero.
``init``: start the decoder from an earlier stage-1 model folder instead of from bicubic.
"""
from __future__ import annotations

import torch

from engine import modelfile
from engine.models import build
from engine.models.encoder import pca, residual_blocks

from . import distributed, recipe
from .bands import band_group_copies, load_adapted
from .adversary import Adversary
from .errors import TrainingError
from .trainer import Stage

PCA_BATCHES = 16
DECODER_SHAPE = ("detail_flat", "synth", "channels", "blocks")  # the options that change the preset's decoder (a fresh run's)


def spectrum_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (torch.fft.rfft2(a, norm="ortho") - torch.fft.rfft2(b, norm="ortho")).abs().mean()


class Stage1(Stage):
    name = "stage1"
    NETWORKS = {"encoder": "encoder", "decoder": "decoder"}

    def __init__(self, settings, device, specs):
        super().__init__(settings, device, specs or settings.options.get("networks"))
        self.options = dict(recipe.STAGE1_BASE, **settings.options)
        # engine.models.decoder (issue 25): the detail path's response to a uniform latent made flat, the
        # output-resolution synthesis
        shape = {k: self.options[k] for k in DECODER_SHAPE if self.options.get(k)}
        if not (specs or settings.options.get("networks")) and shape:
            self.specs["decoder"]["config"].update(shape)
            self.nets["decoder"] = build("decoder", self.specs["decoder"]["config"]).to(device)
        if self.options["gan_weight"] > 0:
            self.adversary = Adversary(settings.bands, settings.preset, device)

    def setup(self):
        """The encoder's analysis and the decoder's detail path start as a PCA of the residual's
        blocks on training batches, the encoder's learned correction at zero. The rest of the
        decoder starts as plain bicubic (last layer at zero), or from ``init``."""
        enc, dec = self.nets["encoder"], self.nets["decoder"]
        init = self.settings.options.get("init")
        if init and self.start_from_bundle_encoder(init):
            return
        torch.nn.init.zeros_(enc.out.weight)
        torch.nn.init.zeros_(enc.out.bias)
        with torch.no_grad():
            rows = torch.cat([residual_blocks(p.hr, p.lr_up) for p in self.stats_pairs(PCA_BATCHES)])
        basis = pca(rows, enc.config["latent"])
        enc.set_analysis(*basis)
        if init:
            self.start_decoder_from(init)
        else:
            torch.nn.init.zeros_(dec.tail[-1].weight)
            torch.nn.init.zeros_(dec.tail[-1].bias)
        if dec.detail is not None:
            dec.set_detail(*basis)

    def start_from_bundle_encoder(self, folder: str) -> bool:
        """Start the encoder and the whole decoder from a bundle that ships its stage-1 encoder
        (bands adapted, training.bands), when its latent fits; False when it cannot."""
        from .bundle import load_encoder

        start = load_encoder(folder)
        if start is None or start[0]["config"]["latent"] != self.specs["encoder"]["config"]["latent"]:
            return False
        card, tensors = modelfile.load(folder)
        old_bands = card.bands
        load_adapted(self.nets["encoder"], "encoder", start[1], old_bands)
        load_adapted(self.nets["decoder"], "decoder", modelfile.network_tensors(tensors, card.decoder), old_bands)
        return True

    def start_decoder_from(self, folder: str) -> None:
        """Start the decoder from the decoder of a stage-1 model folder or a bundle, with its latent
        guidance reset: the blocks' response to the latent becomes the constant it had for a zero
        latent, so the start is that model's regression, and the guidance is learned anew. Weights
        whose shape differs (another latent size) and the detail path keep their fresh start."""
        card, tensors = modelfile.load(folder)
        if card.kind != "stage1" and "decoder" not in card.networks:
            raise TrainingError(f"{folder} is neither the output of a stage-1 run nor a bundle with a decoder")
        spec = card.networks["decoder"]
        old = modelfile.build_networks(card, tensors, ["decoder"], self.device)["decoder"]
        dec = self.nets["decoder"]
        load_adapted(dec, "decoder", old.state_dict(), card.bands, skip=("guide.", "detail."))
        with torch.no_grad():
            constant = old.guide(torch.zeros(1, spec.config["latent"], 1, 1, device=self.device))[0, :, 0, 0]
            # as load_adapted lays the trunk out: one copy per band group (training.bands), then the channels
            # a wider trunk adds (training.widen), which the old channels read through zeros
            constant = constant.repeat(band_group_copies(card.bands, dec.config["bands"]))
            constant = torch.nn.functional.pad(constant, (0, dec.blocks[0].guide.weight.shape[1] - constant.numel()))
            for block in dec.blocks:
                block.guide.bias.add_(block.guide.weight[:, :, 0, 0] @ constant)
                block.guide.weight.zero_()

    def loss(self, pair, gen, ema):
        o = self.options
        mean = self.nets["encoder"](pair.hr, pair.lr_up)
        sigma = o["latent_noise"] * distributed.std(mean)
        z = mean + sigma * distributed.sample(torch.randn, mean.shape, generator=gen, device=mean.device)
        drop = o["latent_dropout"]
        if drop > 0:
            keep = distributed.sample(torch.rand, (z.shape[0], 1, 1, 1), generator=gen, device=z.device) >= drop
            z = z * keep.to(z.dtype)
        sr = pair.keep_valid(self.nets["decoder"](*pair.decoder_inputs(z)))
        l1 = (sr - pair.hr).abs().mean()
        kl = 0.5 * (mean ** 2).mean()
        fft = spectrum_l1(sr, pair.hr)
        loss = l1 + o["kl_weight"] * kl + o["fft_weight"] * fft
        logs = {"l1": l1.item(), "kl": kl.item()}
        if self.adversary is not None and self.step >= o["gan_start"]:
            logs["d"] = self.adversary.update(pair, sr)
            adv = self.adversary.generator_loss(pair, sr)
            loss = loss + o["gan_weight"] * adv
            logs["g"] = adv.item()
        return loss, logs

    def _decode(self, pair, ema, z):
        return ema["decoder"](*pair.decoder_inputs(z))

    def predict(self, pair, ema):
        return self._decode(pair, ema, ema["encoder"](pair.hr, pair.lr_up))

    def reference(self, pair, ema):
        """The decoder with a zero latent (the training average): how much the latent adds."""
        shape = pair.latent_shape(self.specs["decoder"]["config"]["latent"])
        return self._decode(pair, ema, torch.zeros(shape, device=pair.lr.device))

    def export_card(self):
        card = {"kind": "stage1", "latent": self.specs["decoder"]["config"]["latent"]}
        if self.settings.options.get("init"):
            card["init"] = self.settings.options["init"]
        return card
