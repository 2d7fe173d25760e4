"""What both stage-2 methods share: the frozen stage-1 autoencoder, the latent scale, and the
conditioning net's loss: the L1 of what the frozen decoder makes of its latent against HR (the
regression path, trained for fidelity), plus a small L2 ("knowledge distillation") loss against
the true latent, which keeps it a guess of the latent for the denoiser.

Why the decoded loss: the true latent carries what the LR lacks, so the L2-optimal guess explains
little of it (val ×4: latent MSE 1.38 against 1.42 for a zero latent) and, decoded, was less faithful
than a zero latent (26.61 against 27.05 dB on 18 val images after 1000 LCMSR steps).

The adversarial term (``gan_weight`` > 0): each method decodes a sample of its own with the
conditioning net's latent held fixed (LCMSR: its one-step sample from noise; E²DiffSR: its z0
prediction), and adds gan_weight × the PatchGAN's hinge loss of the decoded image, plus
``lr_weight`` × its LR consistency. The denoiser's own objective only asks for the mean of the
latent's posterior, and the decoder's detail path turns a mean (or a guess off by a little) into
flat or 8×8-blocky texture; the discriminator asks instead that a sample look like HR given the LR,
as adversarial consistency distillation (CTM, ADD) and denoising-diffusion GANs do for few-step
samplers. The discriminator starts from stage 1's, which already tells decoded from real detail.
With ``energy_weight``, each method also decodes a second sample and adds that weight × the pair's energy
score against HR, a proper scoring rule: the GAN judges one sample at a time and leaves the samples
free to vary alike everywhere, the energy score asks their spread to follow the uncertainty.
With ``sample_fidelity``, the mean L1 of the decoded samples against HR is added with that weight:
beside the energy score (whose own L1 half has energy_weight/2 per sample) it weighs fidelity above
spread, so that a sample keeps the detail the critic asks for where the LR predicts it and departs
less where it does not (docs/MODELS.md, "Samples trained for fidelity").
With ``calibration_weight`` (beside the energy score), plus that weight × the calibration gap of the two
decoded samples (``calibration_gap``): their local spread against the local error of their mean, the
error held, so that the spread is asked to sit where the error is (docs/MODELS.md, "Nor does asking
the spread to sit where the error is": it costs the samples' fidelity, and the recipe leaves it off).
With ``lattice_weight``, plus that weight × how far the lattice of each decoded sample's added detail
(the sample decoded minus the regression path: the latent guess decoded, as cond_loss decodes it) rises above HR's own
(training.adversary.lattice_excess: engine.metrics.lattice, the bench's measure, per image, in units
of HR's texture, only the sample's power at the harmonics free): a pattern locked to the LR pixels is
asked to go, texture is not.

The spread (``spread``): the conditioning net also predicts, per cell and channel, the spread of the
true latent around its guess (its Laplace likelihood, the guess held; a prior on the LR's texture,
fitted when the run starts), and the samplers draw the residual standardised by it, so that a sample
departs from the guess where the LR is textured and stays on it where it is flat. Without it the
denoiser knew the LR only through the guess, which its decoded L1 keeps near a zero latent (std
0.018 against the true latent's 1.2): on 12 val crops at ×4 its samples' latent std was 0.33 on both
halves of crops whose right half was set flat, where the true latent is within 0.03 of the guess.
``features`` > 0 adds that many channels of LR features for the denoiser, trained by its losses
alone (the guess and the spread are held fixed for it); on their own they did not change that.

The decoder trained on what is decoded (``train_decoder``, issue 25): the stage-1 decoder becomes one
of the stage's trained networks, started from stage 1's, so the gradient of every decoded term (the
regression path's L1, the samples' adversarial, LR-consistency and energy terms) reaches it as well
as the sampler, as in adversarial diffusion distillation (ADD); ``decoder_fidelity`` × stage 1's own
loss of the true latent decoded (its L1 and spectrum L1 against HR) keeps it a decoder of that
latent. The run's model folder then holds the decoder too, and the bundle takes it from there.

Diffusion runs on the normalised latent x0 = latent_scale · encoder(HR, LR), with latent_scale =
1/std of the encoder means over LATENT_BATCHES training batches, fixed when the run starts.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import modelfile
from engine.card import MethodSpec
from engine.latent import from_residual, latent_guess, log_spread, run_tile
from engine.models import preset
from engine.models.decoder import gated
from engine.registry import LCMSR, REGISTRY
from engine.torch_backend import TorchNetworks

from . import distributed, recipe
from .adversary import Adversary, detail_spectrum_gap, lattice_excess, lr_consistency
from .bands import load_adapted
from .bundle import method_spec
from .errors import TrainingError
from .stage1 import spectrum_l1
from .trainer import Stage

LATENT_BATCHES = 8


def energy_score(a: torch.Tensor, b: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The two-sample energy score (per pixel and band, the CRPS estimate) of the samples a and b
    against the truth: ½(|a − y| + |b − y|) − ½|a − b|. It is strictly proper: its minimum is the
    samples drawn from the truth's own distribution, so their spread has to follow the uncertainty."""
    return (0.5 * ((a - truth).abs() + (b - truth).abs()) - 0.5 * (a - b).abs()).mean()


CALIBRATION_SIGMA = 1.0  # output pixels: the local mean that the spread is asked to match
CALIBRATION_RATIO = math.sqrt(4.0 / 3.0)  # E|a − b| / E|(a + b)/2 − y| for a, b, y drawn alike from one Gaussian


def local_mean(x: torch.Tensor, sigma: float = CALIBRATION_SIGMA) -> torch.Tensor:
    """``x`` (B×1×H×W) smoothed by a Gaussian of ``sigma`` pixels (taps to 3σ, edges replicated)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))


def calibration_gap(a: torch.Tensor, b: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """How far the spread of the samples a and b departs, pixel by pixel, from the error of their mean
    against the truth: the mean absolute difference of the local means (local_mean) of |a − b| and of
    CALIBRATION_RATIO × |(a + b)/2 − truth| (band means). When a, b and the truth are three draws from
    one distribution the two agree in expectation; the error is held fixed, so the term moves only
    where the samples differ: toward where their mean is wrong, away from where it is right."""
    spread = (a - b).abs().mean(1, keepdim=True)
    error = ((a + b) / 2 - truth).abs().mean(1, keepdim=True).detach()
    return (local_mean(spread) - CALIBRATION_RATIO * local_mean(error)).abs().mean()


def trained_decoder(folder: str, stage1_card, stage1: str, device) -> tuple[torch.nn.Module, str]:
    """The decoder of an add run (``python -m training add``) trained from the stage-1 run ``stage1``
    (its card ``stage1_card``), frozen, and the SHA-256 of the run's weights."""
    from .bundle import check_run

    card, tensors = modelfile.load(folder)
    check_run(card, folder, LCMSR.name, stage1_card.weights.sha256, stage1, "add")
    if "decoder" not in card.networks:
        raise TrainingError(f"{folder} holds no trained decoder: give the folder of an add run")
    decoder = modelfile.build_networks(card, tensors, ["decoder"], device)["decoder"]
    return decoder.requires_grad_(False), card.weights.sha256


def cell_mean(values: torch.Tensor, pair) -> torch.Tensor:
    """The mean of per-cell ``values`` (B×C×h×w) over the latent cells whose pixels all hold data."""
    valid = pair.cell_valid()
    if valid is None:
        if distributed.world_size() == 1:
            return values.mean()
        valid = torch.ones_like(values[:, :1])
    # under torchrun: over the ranks' mean count, so that DDP's average of the shares is the global batch's mean
    return (values * valid).sum() / distributed.average(valid.sum() * values.shape[1]).clamp_min(1)


class LatentStage(Stage):
    method = ""
    NETWORKS = {"condition": "condition", "denoiser": "denoiser"}

    def __init__(self, settings, device, specs):
        if not settings.stage1:
            raise TrainingError("--stage1 is required: the folder of a stage-1 run")
        card, tensors = modelfile.load(settings.stage1)
        if card.kind != "stage1":
            raise TrainingError(f"{settings.stage1} is not the output of a stage-1 run")
        settings.bands = card.bands
        settings.latent = card.latent
        frozen = modelfile.build_networks(card, tensors, ["encoder", "decoder"], device)
        self.encoder, self.decoder = (frozen[n].requires_grad_(False) for n in ("encoder", "decoder"))
        self.stage1_card = card
        self.options = dict(recipe.STAGE2_BASE, **settings.options)
        super().__init__(settings, device, specs or settings.options.get("networks") or self.fresh_specs(settings))
        self.train_decoder = "decoder" in self.specs  # a fresh run with --train-decoder, or a resumed run that trains it
        config = self.specs["condition"]["config"]
        # the condition's layout, as the card's method entry will give it (engine.latent reads it)
        self.layout = MethodSpec(self.method, latent=settings.latent, features=int(config.get("features", 0)),
                                 spread=bool(config.get("spread", False)))
        self.latent_scale = 1.0
        if self.options["gan_weight"] > 0:
            self.adversary = Adversary(settings.bands, settings.preset, device)

    def modules(self) -> list[torch.nn.Module]:
        return super().modules() + [self.encoder, self.decoder]

    def fresh_specs(self, settings) -> dict:
        """The preset's networks; the conditioning net with ``features`` channels and the ``spread``,
        and a denoiser that reads them."""
        features, spread = int(self.options["features"]), bool(self.options["spread"])
        extra = features + (settings.latent if spread else 0)
        specs = {}
        for name, kind in self.NETWORKS.items():
            config = preset(settings.preset, kind, bands=settings.bands, latent=settings.latent)
            if kind == "condition":
                config.update({"features": features} if features else {}, **({"spread": True} if spread else {}))
            elif extra:
                config["features"] = extra
            specs[name] = {"kind": kind, "config": config}
        if self.options.get("train_decoder"):  # only a run with --train-decoder has the option
            specs["decoder"] = {"kind": "decoder", "config": dict(self.stage1_card.networks[self.stage1_card.decoder].config)}
            if self.options.get("detail_flat"):  # engine.models.decoder: the detail path's response to a uniform latent made flat
                specs["decoder"]["config"]["detail_flat"] = True
            if self.options.get("gate"):  # engine.models.decoder: the gain on what the latent adds at the output resolution
                if not gated(specs["decoder"]["config"]):
                    raise TrainingError("--gate needs a stage-1 decoder with a detail path or a synthesis for it to scale")
                specs["decoder"]["config"]["gate"] = True
        elif self.options.get("detail_flat"):
            raise TrainingError("--detail-flat in stage 2 changes the decoder: it needs --train-decoder")
        return specs

    def guess(self, cond: torch.Tensor) -> torch.Tensor:
        """The latent guess in a condition (engine.latent.latent_guess)."""
        return latent_guess(cond, self.layout)

    def held(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition as the denoiser's losses see it: the latent guess and the spread held fixed
        (only their own losses move them), the features not."""
        n = self.layout.latent * (2 if self.layout.spread else 1)
        return torch.cat([cond[:, :n].detach(), cond[:, n:]], 1)

    def residual(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """What the sampler draws: the true latent, or with the spread its residual standardised per
        cell, (x0 − guess)/spread (engine.latent.from_residual)."""
        if not self.layout.spread:
            return x0
        return (x0 - self.guess(cond).detach()) / log_spread(cond, self.layout).detach().exp()

    def clean(self, cond: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The clean latent of a sampler's output (engine.latent.from_residual), the guess and the
        spread held fixed."""
        return from_residual(self.held(cond), self.layout, sample)

    def setup(self) -> None:
        """The latent scale from training batches; the conditioning net starts by predicting a zero
        latent, so the regression path starts as stage 1's own zero-latent regression, and a unit
        spread (its feature channels keep their random start: from zero the denoiser's gradient
        hardly moved them)."""
        if self.train_decoder:  # stage 1's decoder; a gate it lacks keeps its fresh start, a gain of 1
            self.nets["decoder"].load_state_dict(dict(self.nets["decoder"].state_dict(), **self.decoder.state_dict()))
        with torch.no_grad():
            pairs = list(self.stats_pairs(LATENT_BATCHES))
            means = [self.encoder(pair.hr, pair.lr_up) for pair in pairs]
            self.latent_scale = float(1.0 / torch.cat([m.flatten() for m in means]).std().clamp_min(1e-6))
            if self.layout.spread:
                self.fit_spread_prior(pairs, [m * self.latent_scale for m in means])
            out = self.nets["condition"].out
            n = self.settings.latent * (2 if self.layout.spread else 1)
            out.weight[:n] = 0
            out.bias[:n] = 0
        init = self.settings.options.get("init")
        if init:
            self.start_from(init)
        if self.adversary is not None:
            self.start_adversary()

    def fit_spread_prior(self, pairs, latents) -> None:
        """The conditioning net's spread prior (engine.models.condition) fitted to training batches,
        where the guess is still a zero latent: per channel, least squares of log |x0| on the log
        texture and log scale, then the offset that makes it the Laplace MLE (the mean of |x0|/spread
        is 1)."""
        net = self.nets["condition"]
        inputs = torch.cat([net.spread_inputs(net.upsample(pair.lr, *pair.condition_inputs().hr_tables), pair.inv_scale)
                            for pair in pairs]).permute(0, 2, 3, 1).reshape(-1, 2)
        x0 = torch.cat(latents).permute(0, 2, 3, 1).reshape(inputs.shape[0], -1).abs()
        design = torch.cat([inputs, torch.ones_like(inputs[:, :1])], 1).double()
        coef = torch.linalg.lstsq(design, torch.log(x0 + 1e-3).double()).solution  # 3 × latent
        offset = torch.log((x0.double() / torch.exp(design @ coef)).mean(0))
        net.spread_prior.weight.copy_(coef[:2].T.reshape(net.spread_prior.weight.shape).float())
        net.spread_prior.bias.copy_((coef[2] + offset).float())

    def start_adversary(self) -> None:
        """The discriminator starts from the one in the stage-1 run's checkpoint, when it has one."""
        from safetensors.torch import load_file

        from .trainer import CHECKPOINT, aux_part

        path = Path(self.settings.stage1) / CHECKPOINT
        if path.exists():
            self.adversary.load_tensors(aux_part(load_file(str(path), device=str(self.device))), optimizer=False)

    def start_from(self, folder: str) -> None:
        """Start the conditioning net and the denoiser from this method's networks in a bundle, or in
        a run folder of this method (bands adapted, training.bands); weights whose shape differs keep
        their fresh start. When the start was trained on another latent (a bundle that ships no
        stage-1 encoder, whose stage 1 made a new latent; a run on another stage-1 model), the
        start's conditioning net does not predict this one: its output layer keeps the zero start."""
        from .bundle import load_encoder

        card, tensors = modelfile.load(folder)
        if card.kind == self.method:  # a run folder of this method: its networks by role
            names = {role: role for role in ("condition", "denoiser")}
            same_latent = card.stage1 == self.stage1_card.weights.sha256
        elif self.method in card.methods:
            spec = card.methods[self.method]
            names = {role: getattr(spec, role) for role in ("condition", "denoiser")}  # the networks the entry names
            same_latent = load_encoder(folder) is not None
        else:
            raise TrainingError(f"{folder} has no {self.method} networks to start from")
        for role, net in names.items():
            skip = () if role == "denoiser" or same_latent else ("out.",)
            load_adapted(self.nets[role], role, modelfile.network_tensors(tensors, net), card.bands, skip)

    def state(self) -> dict:
        return dict(super().state(), latent_scale=self.latent_scale)

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.latent_scale = state["latent_scale"]

    def adversarial(self, pair, sample: torch.Tensor, second: torch.Tensor | None = None, *,
                    regression: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The adversarial term of a normalised latent ``sample`` (0 without a discriminator); with a
        ``second`` sample of the same LR, plus energy_weight × their energy score against HR; with
        lattice_weight, plus that weight × the samples' lattice above HR's, and with spectrum_weight, that
        weight × their added detail's spectrum gap to HR's (training.adversary), their added detail taken
        against ``regression``, the regression path as cond_loss decoded it (needed with either)."""
        if self.adversary is None:
            return torch.zeros((), device=sample.device), {}
        o = self.options
        sr = pair.keep_valid(self.decode(pair, sample, self.nets))
        d = self.adversary.update(pair, sr)
        g = self.adversary.generator_loss(pair, sr)
        lr = lr_consistency(sr, pair)
        loss = o["gan_weight"] * g + o["lr_weight"] * lr
        logs = {"d": d, "g": g.item(), "lr": lr.item()}
        decoded = [sr]
        if second is not None:
            decoded.append(pair.keep_valid(self.decode(pair, second, self.nets)))
            energy = energy_score(*decoded, pair.hr)
            loss, logs = loss + o["energy_weight"] * energy, dict(logs, energy=energy.item())
            if o.get("calibration_weight"):
                gap = calibration_gap(*decoded, pair.hr)
                loss, logs = loss + o["calibration_weight"] * gap, dict(logs, calibration=gap.item())
        if o.get("sample_fidelity"):
            fidelity = sum((x - pair.hr).abs().mean() for x in decoded) / len(decoded)
            loss, logs = loss + o["sample_fidelity"] * fidelity, dict(logs, fidelity=fidelity.item())
        if o.get("lattice_weight"):  # both stages pass cond_loss's regression
            excess = sum(lattice_excess(x, regression, pair.hr, pair.scale) for x in decoded) / len(decoded)
            loss, logs = loss + o["lattice_weight"] * excess, dict(logs, lattice=excess.item())
        if o.get("spectrum_weight"):
            gap = sum(detail_spectrum_gap(x, regression, pair.hr) for x in decoded) / len(decoded)
            loss, logs = loss + o["spectrum_weight"] * gap, dict(logs, spectrum=gap.item())
        return loss, logs

    def run(self, pair, ema, detail: float) -> torch.Tensor:
        """The SR of a batch at ``detail`` as the engine makes it (engine.latent.run_tile: condition ->
        sampler -> decoder) from the EMA networks and the decoder (stage 1's frozen one, or the trained
        one with --train-decoder), with the card entry the bundle
        will carry (training.bundle.method_spec) and torch's noise of seed 0."""
        spec = MethodSpec.parse(self.method, method_spec(self.method, self.latent_scale, self.export_card()),
                                self.layout.latent)
        decoder = ema["decoder"] if self.train_decoder else self.decoder
        nets = TorchNetworks({"condition": ema["condition"], "denoiser": ema["denoiser"], "decoder": decoder},
                             self.device)
        gen = torch.Generator(device=self.device).manual_seed(0)
        shape = pair.latent_shape(self.layout.latent)

        def noise(k):
            return torch.randn(shape, generator=gen, device=self.device)

        return run_tile(nets, REGISTRY[self.method], spec, spec.steps, pair.arrays, noise, detail)

    def predict(self, pair, ema):
        """Validation's SR: a full sample (D = 1) of the EMA networks, seed 0."""
        return self.run(pair, ema, 1.0)

    def target(self, pair) -> torch.Tensor:
        """The normalised true latent x0 of a batch."""
        with torch.no_grad():
            return self.encoder(pair.hr, pair.lr_up) * self.latent_scale

    def condition(self, nets: dict, pair) -> torch.Tensor:
        return nets["condition"](*pair.condition_inputs())

    def cond_loss(self, cond: torch.Tensor, x0: torch.Tensor, pair) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The conditioning net's loss: decoded L1 against HR plus the latent L2 against x0; with the
        spread, plus its Laplace negative log-likelihood of x0 around the guess (held fixed), whose
        minimum is the spread = the mean absolute deviation of x0 from the guess given the LR. Beside
        it, the regression path (the guess decoded, no gradient) when the decoded L1, the lattice or the
        spectrum term reads it, else None: those terms take it from here rather than decode it again."""
        o = self.options
        full, cond = cond, self.guess(cond)
        loss = o["cond_weight"] * cell_mean((cond - x0) ** 2, pair)
        if self.layout.spread:
            log = log_spread(full, self.layout)
            loss = loss + cell_mean((x0 - cond.detach()).abs() / log.exp() + log, pair)
        pixel = o["cond_pixel_weight"]
        regression = None
        if pixel > 0 or o.get("lattice_weight") or o.get("spectrum_weight"):
            with torch.set_grad_enabled(pixel > 0 and torch.is_grad_enabled()):
                regression = pair.keep_valid(self.decode(pair, cond, self.nets))
        if pixel > 0:
            loss = loss + pixel * (regression - pair.hr).abs().mean()
        if self.train_decoder:
            sr = pair.keep_valid(self.decode(pair, x0, self.nets))
            fidelity = (sr - pair.hr).abs().mean() + recipe.STAGE1_BASE["fft_weight"] * spectrum_l1(sr, pair.hr)
            loss = loss + o["decoder_fidelity"] * fidelity
        return loss, None if regression is None else regression.detach()

    def decode(self, pair, x0: torch.Tensor, nets: dict) -> torch.Tensor:
        """The image of a normalised latent: the decoder in ``nets`` (the trained or the EMA networks)
        when the stage trains it, else stage 1's frozen decoder."""
        decoder = nets["decoder"] if self.train_decoder else self.decoder
        return decoder(*pair.decoder_inputs(x0 / self.latent_scale))

    def reference(self, pair, ema):
        """The regression path (D = 0: the latent = the conditioning net's prediction), which validation
        logs beside the samples."""
        return self.run(pair, ema, 0.0)

    def base_card(self) -> dict:
        layout = {"latent": self.layout.latent, "features": self.layout.features, "spread": self.layout.spread}
        return {"kind": self.method, "latent": self.stage1_card.latent, "latent_scale": self.latent_scale,
                "stage1": {"sha256": self.stage1_card.weights.sha256},
                **({k: v for k, v in layout.items() if v} if self.layout.split else {})}
