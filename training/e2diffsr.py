"""E²DiffSR stage 2: conditioning net + ε-prediction denoiser on the short, steep chain (T = 4).

The denoiser learns the noise: per sample t ~ U{1..T}, z_t = sqrt(ᾱ_t)·z0 + sqrt(1 − ᾱ_t)·ε and the
loss is the MSE of ε̂(z_t, t) against ε, plus the conditioning net's L2 loss. The published
objective unrolls the chain from pure noise and matches the final ẑ0 to z0 with an MSE; its minimum
is the conditional mean of z0 whatever the noise, so its samples collapse to the average (the first
bundle's E²DiffSR samples differed by 0.07 DN between seeds). The ε objective's minimum is the
score of the noised latents, so the ancestral sampler draws samples.
"""
from __future__ import annotations

import torch

from engine.latent import e2diffsr_sample
from engine.schedulers import ddpm

from . import distributed
from .latent import LatentStage

SAMPLE_STEPS = 4
ETA = 1.0


class E2DiffSRStage(LatentStage):
    name = method = "e2diffsr"
    NETWORKS = {"condition": "condition", "denoiser": "denoiser"}

    def loss(self, pair, gen, ema):
        x0 = self.target(pair)
        cond = self.condition(self.nets, pair)
        total = len(ddpm.DEFAULT_BETAS)
        t = distributed.sample(torch.randint, (x0.shape[0],), 1, total + 1, generator=gen, device=gen.device).to(x0.device)
        abar = torch.as_tensor(ddpm.alphas_bar(ddpm.DEFAULT_BETAS), dtype=x0.dtype, device=x0.device)[t]
        abar = abar.reshape(-1, 1, 1, 1)
        noise = distributed.sample(torch.randn, x0.shape, generator=gen, device=x0.device)
        z_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        eps = self.nets["denoiser"](z_t, cond, t.to(x0.dtype)[:, None] / total, pair.inv_scale)
        mse = torch.mean((eps - noise) ** 2)
        return mse + self.cond_loss(cond, x0), {"eps": mse.item()}

    def predict(self, pair, ema):
        gen = torch.Generator(device=self.device).manual_seed(0)
        cond = self.condition(ema, pair)

        def noise(k):
            return torch.randn(cond.shape, generator=gen, device=cond.device)

        return self.decode(pair, e2diffsr_sample(ema["denoiser"], cond, pair.inv_scale, SAMPLE_STEPS, noise,
                                                 ddpm.DEFAULT_BETAS, ETA))

    def export_card(self):
        return dict(self.base_card(), betas=list(ddpm.DEFAULT_BETAS), eta=ETA, steps=SAMPLE_STEPS)
