"""LCMSR stage 2: consistency training of the latent denoiser, no teacher.

Per sample t2 ~ U{1..T} and t1 = max(t2 - Δ, 0); z0 is noised to both with the same noise; the
loss is the MSE between f_θ(z_t2, t2) and the EMA target f_EMA(z_t1, t1) (no gradient; at t1 = 0 it
is z0 itself by the boundary condition), plus the conditioning net's loss (training.latent) and,
with a discriminator, the adversarial term of the one-step sample f(noise, T) (training.latent).
ADDStage continues a trained run with the decoder trained too: the recipe's stage add.
The denoiser sees the conditioning net's latent guess held fixed: only the conditioning net's own loss
moves the regression path (with the adversarial term on, the consistency loss's pull through the
denoiser cost it 0.5 dB in 1000 steps).
"""
from __future__ import annotations

import numpy as np
import torch

from engine.models.inputs import DenoiserInputs
from engine.registry import LCMSR
from engine.schedulers import consistency as cm

from . import distributed
from .latent import LatentStage, cell_mean

SAMPLE_STEPS = 1
MAX_STEPS = LCMSR.max_steps


class LCMSRStage(LatentStage):
    name = method = LCMSR.name

    def f(self, nets, z, cond, t: torch.Tensor, inv_scale):
        """The consistency function with the networks ``nets`` at per-sample timesteps t (B,)."""
        t4 = t.float().reshape(-1, 1, 1, 1)
        return cm.consistency(z, nets["denoiser"](*DenoiserInputs(z, cond, t.float()[:, None] / cm.T, inv_scale)), t4, cm.T)

    def loss(self, pair, gen, ema):
        x0 = self.target(pair)
        cond = self.condition(self.nets, pair)
        held = self.held(cond)  # the denoiser's losses do not move the regression path
        z0 = self.residual(x0, cond)  # what the sampler draws
        b = x0.shape[0]
        t2 = distributed.sample(torch.randint, (b,), 1, cm.T + 1, generator=gen, device=gen.device).cpu()
        t1 = torch.from_numpy(cm.earlier(t2.numpy()))
        noise = distributed.sample(torch.randn, x0.shape, generator=gen, device=x0.device)

        def noised(t):
            a, s = (torch.from_numpy(np.asarray(c, dtype=np.float32)).to(x0.device).reshape(-1, 1, 1, 1)
                    for c in cm.noise_coefficients(t.numpy(), cm.T))
            return a * z0 + s * noise

        pred = self.f(self.nets, noised(t2), held, t2.to(x0.device), pair.inv_scale)
        with torch.no_grad():
            target = self.f(ema, noised(t1), self.condition(ema, pair), t1.to(x0.device), pair.inv_scale)
        consistency = cell_mean((pred - target) ** 2, pair)
        cond_loss, regression = self.cond_loss(cond, x0, pair)
        loss, logs = consistency + cond_loss, {"consistency": consistency.item()}
        if self.adversary is not None:
            end = torch.full((b,), cm.T, device=x0.device)
            start = distributed.sample(torch.randn, x0.shape, generator=gen, device=x0.device)
            second = None
            if self.options["energy_weight"] > 0:
                other = distributed.sample(torch.randn, x0.shape, generator=gen, device=x0.device)
                second = self.clean(cond, self.f(self.nets, other, held, end, pair.inv_scale))
            first = self.clean(cond, self.f(self.nets, start, held, end, pair.inv_scale))
            adv, more = self.adversarial(pair, first, second, regression=regression)
            loss, logs = loss + adv, dict(logs, **more)
        return loss, logs

    def export_card(self):
        return dict(self.base_card(), T=cm.T, sigma_data=cm.SIGMA_DATA, steps=SAMPLE_STEPS, max_steps=MAX_STEPS)


class ADDStage(LCMSRStage):
    """The recipe's stage add (training.recipe.ADD, ``python -m training add``): LCMSR's training
    from its stage-2 run (``init``), with the stage-1 decoder trained on the decoded one-step samples
    (``train_decoder``, training.latent). Its card records it as its own stage, ``add``."""
    name = "add"
