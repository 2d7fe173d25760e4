"""The training recipe: every stage's hyperparameters, in one table.

The network sizes are engine.models.PRESETS; everything a run is trained with is here, and read by
the training CLI (its defaults), the fine-tune, the stages, the step bench and, through the CLI's
defaults, the Makefile:

- STAGE1_BASE, STAGE2_BASE: a stage's loss options that a run does not give (training.stage1,
  training.latent): the plain losses, without an adversary, latent dropout, LR features or spread.
- STAGE1, STAGE2: the recipe that trained the bundled model (resources/models/latentsr-rgb: its card
  records each stage's steps and the stage-2 options), the defaults of ``python -m training
  stage1|e2diffsr|lcmsr``, and so what ``make train`` runs (the Makefile passes only the data, the run
  folders and stage 1's start bundle, ``--init``). Stage 1 starts from a bundle and continues its
  decoder for 16000 steps at lr 5e-4; half of the samples decode a zero latent, so that the LR branch
  keeps a regression of its own, and it has no PatchGAN (gan_start is when a run that asks for one
  with ``--gan-weight`` starts it): the faithful end rose by 0.1 dB at the validation's zero latent
  and the latent's worth with it, and both went on rising from 3000 steps to 6000
  (docs/MODELS.md, "Stage 1 longer, without its PatchGAN"), and at half the rate on to 16000 (the
  zero latent 0.13 dB over the sixth 2026-12-05 bundle's at ×4 and 0.15 at ×2: "A longer schedule at
  half the rate"; at 1e-3 a 16000-step run diverged at step 2444). Its guard (training.spikes, ``--guard``)
  skips an update whose gradient norm is over 10 times the recent median; the stages with a critic
  have none.
- RUN: the options every stage shares (batch, crop, warmup, EMA, validation, checkpoints, seed).
- ADD: the stage after them (``python -m training add``): LCMSR's networks from its stage-2 run, and the
  stage-1 decoder trained beside them on the decoded one-step samples (adversarial diffusion
  distillation, training.latent ``train_decoder``), with decoder_fidelity × stage 1's loss of the
  true latent decoded, cond_pixel_weight × the regression path's L1 (4: stage 2's 1 lifted, for the
  faithful end), the energy score at 8 × stage 2's weight (it lifts the faithful end and the
  calibration, and sharpens the samples), sample_fidelity × the decoded samples' L1 against HR (which
  holds them faithful against that), lattice_weight × how far
  their added detail's lattice rises above HR's and spectrum_weight × the gap between their added
  detail's spectrum and HR's (training.latent ``adversarial``), and the decoder gains its gate (a gain
  per output pixel on what the latent adds, engine.models.decoder); a short warmup, and a learning rate
  of 1e-3 (at 2e-4 the samples' spread followed the error less: docs/MODELS.md,
  "The add stage's learning rate"), for 2000 steps (at 1000 the samples were less faithful and less
  sharp at D = 1, and their spread followed the error less: "The add stage's length"). The
  bundle takes LCMSR's networks and the decoder from it, so E²DiffSR decodes with that decoder too.
- ADD_E2DIFFSR: the stage after it (``python -m training add-e2diffsr``): E²DiffSR's networks from
  its stage-2 run, trained on, and judged through, the add run's decoder (frozen), with stage 2's
  losses (the energy score at twice their weight), its own sample_fidelity (25: at 30 E²DiffSR's D = 1
  came 0.53 dB more faithful than LCMSR's, at 20 onto LCMSR's), ADD's warmup and a
  learning rate of 2e-4 (at ADD's, E²DiffSR's D = 1 came 0.49 dB from LCMSR's); its adversarial terms judge
  the sampler's own 4-step samples (``unroll``, training.e2diffsr). The bundle takes E²DiffSR's
  networks from it.
- FINETUNE: ``python -m training finetune`` and latentsr:train (training.finetune): stage 1 from the
  start bundle with latent dropout and no adversary, each stage 2 with the base losses (its networks,
  with their features and spread, come from the bundle).
"""
from __future__ import annotations

# latent_noise: σ / spread of μ (0.1: 20 dB); cond_weight: the conditioning net's latent L2 term,
# cond_pixel_weight: its decoded L1 term
STAGE1_BASE = {"kl_weight": 1e-4, "fft_weight": 0.05, "latent_noise": 0.1, "latent_dropout": 0.0,
               "gan_weight": 0.0, "gan_start": 0}
STAGE2_BASE = {"cond_weight": 0.01, "cond_pixel_weight": 1.0, "gan_weight": 0.0, "lr_weight": 1.0,
               "energy_weight": 0.0, "features": 0, "spread": False}

STAGE1 = {"steps": 16000, "lr": 5e-4, "guard": 10.0,
          "options": dict(STAGE1_BASE, latent_dropout=0.5, gan_start=600, detail_flat=True, synth=16)}
STAGE2 = {"steps": 1500, "lr": 3e-4,
          "options": dict(STAGE2_BASE, gan_weight=0.5, lr_weight=5.0, energy_weight=10.0, features=16, spread=True)}

ADD = {"steps": 2000, "lr": 1e-3, "warmup": 20,
       "options": dict(STAGE2["options"], cond_pixel_weight=4.0, energy_weight=80.0, train_decoder=True,
                       decoder_fidelity=4.0, sample_fidelity=30.0, lattice_weight=0.1, spectrum_weight=0.05,
                       gate=True)}
ADD_E2DIFFSR = {"steps": 1000, "lr": 2e-4, "warmup": 20,
                "options": dict(STAGE2["options"], energy_weight=20.0, sample_fidelity=25.0, unroll=True)}

RUN = {"batch": 8, "warmup": 100, "crop": 96, "scales": (1.0, 8.0), "ema_decay": 0.999, "val_images": 16,
       "val_crop": 128, "ckpt_every": 250, "val_every": 250, "seed": 0}

FINETUNE = {"steps": 600, "lr": 2e-4, "stage1_options": dict(STAGE1_BASE, latent_dropout=0.25)}
