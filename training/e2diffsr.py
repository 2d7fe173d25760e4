"""E²DiffSR stage 2: conditioning net + z0-prediction denoiser on the short, steep chain (T = 4).

Per sample t ~ U{1..T}, z_t = sqrt(ᾱ_t)·z0 + sqrt(1 − ᾱ_t)·ε; the denoiser predicts z0 from (z_t, t,
cond) and the loss is its MSE against z0, plus the conditioning net's loss (training.latent). The
published objective instead unrolls the whole chain from pure noise and matches its final ẑ0 to z0;
its minimum is the conditional mean whatever the noise, so its samples collapse to the average (the
first bundle's E²DiffSR samples differed by 0.07 DN between seeds). ε-prediction, which the second
recipe used, is ill-conditioned on this chain: at t = 4, ᾱ = 0.025, so ẑ0 = (z_t − 0.99·ε̂)/0.16
amplifies every error of ε̂ six times (measured: its 4-step samples were 7.8 dB below bicubic after
800 steps).

With a discriminator, the z0 prediction also takes the adversarial term (training.latent), as in
denoising-diffusion GANs: the z0 that a step hands on is then a plausible sharp latent, not the
mean, so that four steps suffice. The denoiser sees the conditioning net's latent held fixed: the
regression path is trained for fidelity alone. With ``energy_weight``, a second z0 prediction from
other noise at the same t joins it in the energy score against HR (training.latent), so that the
predictions' spread, and with it the samples', follows the uncertainty.

With ``unroll`` the adversarial terms (the PatchGAN, the LR consistency, the energy score and the
sample fidelity) judge instead the sampler's own samples: the whole 4-step chain from fresh noise, as
engine.samplers.ddim draws it at D = 1, with the gradient through every step (adversarial diffusion
distillation applied to the chain's final ẑ0); the per-step z0 MSE stays beside them. A z0 prediction
judged at one random step was sharp alone, yet the chain of four made blotchy samples less faithful
than LCMSR's (docs/MODELS.md, "E²DiffSR judged on its own samples"). It costs 1.2× a step's time.

The sampler steps deterministically between steps (DDIM, η = 0): each start noise gives its own
sample. With the adversarially trained denoiser, re-noising (η = 1) washed the detail out: 18 val
images at ×4, D = 1: LSD 7.44 with η = 1, 6.44 with η = 0.5, 6.51 with η = 0 (ΔPSNR +0.44, −1.53,
−2.00 dB; D = 0.5: +1.12 / 7.82 against −0.08 / 6.40 with η = 0, LCMSR's −0.29 / 5.82).
"""
from __future__ import annotations

import torch

from engine.latent import denoiser_model
from engine.models.inputs import DenoiserInputs
from engine.registry import E2DIFFSR
from engine.samplers.ddim import sample_ddim
from engine.schedulers import ddpm

from . import distributed
from .latent import LatentStage, cell_mean, trained_decoder

SAMPLE_STEPS = 4
ETA = 0.0  # DDIM between steps; the start noise makes the sample (module notes)
PREDICTION = "x0"


class E2DiffSRStage(LatentStage):
    name = method = E2DIFFSR.name

    def loss(self, pair, gen, ema):
        x0 = self.target(pair)
        cond = self.condition(self.nets, pair)
        t = distributed.sample(torch.randint, (x0.shape[0],), 1, ddpm.T + 1, generator=gen, device=gen.device).to(x0.device)
        abar = torch.as_tensor(ddpm.alphas_bar(ddpm.DEFAULT_BETAS), dtype=x0.dtype, device=x0.device)[t]
        abar = abar.reshape(-1, 1, 1, 1)
        held, level = self.held(cond), t.to(x0.dtype)[:, None] / ddpm.T
        r0 = self.residual(x0, cond)  # what the sampler draws

        def predict():
            noise = distributed.sample(torch.randn, x0.shape, generator=gen, device=x0.device)
            return self.nets["denoiser"](*DenoiserInputs(ddpm.q_sample(r0, noise, abar), held, level, pair.inv_scale))

        z0 = predict()
        mse = cell_mean((z0 - r0) ** 2, pair)
        pairs = 2 if self.adversary is not None and self.options["energy_weight"] > 0 else 1
        if self.adversary is not None and self.options.get("unroll"):
            judged = [self.clean(cond, self.chain(pair, held, r0.shape, gen)) for _ in range(pairs)]
        else:
            judged = [self.clean(cond, z) for z in [z0] + [predict() for _ in range(pairs - 1)]]
        cond_loss, regression = self.cond_loss(cond, x0, pair)
        adv, logs = self.adversarial(pair, *judged, regression=regression)
        return mse + cond_loss + adv, dict({"z0": mse.item()}, **logs)

    def chain(self, pair, held: torch.Tensor, shape, gen) -> torch.Tensor:
        """The sampler's residual as the engine draws it at D = 1 (engine.samplers.ddim on the card's
        chain: SAMPLE_STEPS steps, ETA, PREDICTION) from fresh start noise, with the gradient through every
        step: what ``unroll`` judges."""
        start = distributed.sample(torch.randn, shape, generator=gen, device=held.device)
        model = denoiser_model(lambda inputs: self.nets["denoiser"](*inputs))
        schedule = ddpm.schedule(SAMPLE_STEPS, ddpm.DEFAULT_BETAS, ETA, PREDICTION)
        return sample_ddim(model, start, schedule, {"cond": held, "inv_scale": pair.inv_scale})

    def export_card(self):
        return dict(self.base_card(), betas=list(ddpm.DEFAULT_BETAS), eta=ETA, steps=SAMPLE_STEPS,
                    prediction=PREDICTION)


class AddE2DiffSRStage(E2DiffSRStage):
    """The recipe's stage after ``add`` (training.recipe.ADD_E2DIFFSR, ``python -m training
    add-e2diffsr``): E²DiffSR's training continued from its stage-2 run (``init``) with the decoder of
    the add run (``decoder``, frozen) in place of stage 1's, so that its z0 predictions are decoded,
    and judged by the PatchGAN, as the bundle will decode them. Its card records it as its own stage,
    with the add run's weights' SHA-256 (``decoder_sha256``), which training.bundle checks."""
    name = "add-e2diffsr"

    def __init__(self, settings, device, specs):
        super().__init__(settings, device, specs)
        self.decoder, settings.options["decoder_sha256"] = trained_decoder(settings.options["decoder"], self.stage1_card,
                                                                           settings.stage1, device)
