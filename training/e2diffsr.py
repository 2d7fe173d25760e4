"""E²DiffSR stage 2: conditioning net + ε-prediction denoiser, trained by unrolling the short chain.

Each batch runs an n-step sampler (n uniform in 1..T, so every step count the engine offers is
trained) from pure noise exactly as inference does, with gradients through every step, and matches
the final ẑ0 to the true latent z0 (MSE), plus the conditioning net's L2 loss.
"""
from __future__ import annotations

import torch

from engine.latent import e2diffsr_sample
from engine.schedulers import ddpm

from .latent import LatentStage

SAMPLE_STEPS = 4
ETA = 1.0


class E2DiffSRStage(LatentStage):
    name = method = "e2diffsr"
    NETWORKS = {"condition": "condition", "denoiser": "denoiser"}

    def loss(self, pair, gen, ema):
        x0 = self.target(pair)
        cond = self.condition(self.nets, pair)
        steps = int(torch.randint(1, len(ddpm.DEFAULT_BETAS) + 1, (1,), generator=gen, device=gen.device))

        def noise(k):
            return torch.randn(x0.shape, generator=gen, device=x0.device)

        x0_hat = e2diffsr_sample(self.nets["denoiser"], cond, pair.inv_scale, steps, noise, ddpm.DEFAULT_BETAS, ETA)
        chain = torch.mean((x0_hat - x0) ** 2)
        return chain + self.cond_loss(cond, x0), {"chain": chain.item(), "steps": steps}

    def predict(self, pair, ema):
        gen = torch.Generator(device=self.device).manual_seed(0)
        cond = self.condition(ema, pair)

        def noise(k):
            return torch.randn(cond.shape, generator=gen, device=cond.device)

        return self.decode(pair, e2diffsr_sample(ema["denoiser"], cond, pair.inv_scale, SAMPLE_STEPS, noise,
                                                 ddpm.DEFAULT_BETAS, ETA))

    def export_card(self):
        return dict(self.base_card(), betas=list(ddpm.DEFAULT_BETAS), eta=ETA, steps=SAMPLE_STEPS)
