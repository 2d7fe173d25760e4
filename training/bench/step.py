"""Where a training step's time goes (python -m training.bench step --data DIR [options]).

Runs ``make train``'s stage-1 recipe (a PatchGAN, where the recipe has one, on from the first step;
the recipe has none since the third 2026-12-05 bundle) and then its LCMSR
recipe (the spread, 16 feature channels, the PatchGAN, the LR consistency and the energy score) on
that stage 1, through the real trainer, in each precision of ``--precisions`` (training.precision)
and with or without channels_last weights, the configurations taking turns every ``--steps`` steps
for ``--rounds`` rounds (the first round is a warm-up and is not counted), so that the load of
other processes on a shared machine falls on all of them alike. Each step's wall time is split by
timers around the trainer's own calls:

- data: the crops (the data loader) and the LR with its sampling tables (make_pair);
- loss: the stage's loss call, i.e. every forward pass and loss, with the critic's update inside it;
  each network's forward passes are also summed on their own (the discriminator's include those of
  the critic's update);
- critic: the discriminator's update (its forward, backward and Adam step);
- backward: the generator's backward pass;
- optimizer: gradient clipping and the AdamW step; other: the EMA and the loop's bookkeeping.

After the last round, each network's forward and backward alone, on the inputs of its last call in
a training step (backward: of the mean square of its output, to the weights and the inputs that
needed a gradient there), in each configuration.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from .. import precision as precisions
from .. import recipe
from .. import trainer as trainer_module
from ..lcmsr import LCMSRStage
from ..stage1 import Stage1
from ..trainer import Settings, Trainer

STAGE1_OPTIONS = dict(recipe.STAGE1["options"], gan_start=0)  # the recipe's, a PatchGAN (if any) on from the first step


class Timers:
    """Seconds per named phase, and whether a stage's loss call is running."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.in_loss = 0

    @contextlib.contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def wrap(self, name: str, fn):
        def timed_call(*args, **kwargs):
            with self.timed(name):
                return fn(*args, **kwargs)
        return timed_call


def networks(trainer: Trainer) -> dict:
    """The modules whose forward passes a step runs: the trained ones, stage 2's frozen stage 1, the critic."""
    nets = dict(trainer.stage.nets)
    for name in ("encoder", "decoder"):
        frozen = getattr(trainer.stage, name, None)
        if frozen is not None and name not in nets:
            nets[f"{name} (frozen)"] = frozen
    if trainer.stage.adversary is not None:
        nets["discriminator"] = trainer.stage.adversary.net
    return nets


def instrument(trainer: Trainer, timers: Timers, calls: dict) -> None:
    """Timers around the trainer's calls (module notes); ``calls`` gets each network's last inputs."""
    stage = trainer.stage
    loss = stage.loss

    def timed_loss(*args, **kwargs):
        timers.in_loss += 1
        try:
            with timers.timed("loss: forward passes, losses, critic"):
                return loss(*args, **kwargs)
        finally:
            timers.in_loss -= 1

    stage.loss = timed_loss
    if stage.adversary is not None:
        stage.adversary.update = timers.wrap("critic update (in loss)", stage.adversary.update)
    trainer.opt.step = timers.wrap("optimizer: AdamW", trainer.opt.step)
    for name, net in networks(trainer).items():
        starts = []

        def pre(module, args, starts=starts):
            starts.append(time.perf_counter())

        def post(module, args, output, name=name, starts=starts):
            timers.seconds[f"forward: {name} (in loss)"] += time.perf_counter() - starts.pop()
            if torch.is_grad_enabled():
                calls[name] = (module, [a.detach().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a
                                        for a in args])

        net.register_forward_pre_hook(pre)
        net.register_forward_hook(post)


@contextlib.contextmanager
def patched(timers: Timers):
    """The process-wide calls the trainer makes: the loader, make_pair, backward and clipping."""
    loader, make_pair = trainer_module.data.loader, trainer_module.make_pair
    backward, clip = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_

    def timed_loader(*args, **kwargs):
        batches = iter(loader(*args, **kwargs))
        while True:
            with timers.timed("data: crops"):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def timed_backward(self, *args, **kwargs):
        if timers.in_loss:
            return backward(self, *args, **kwargs)
        with timers.timed("backward"):
            return backward(self, *args, **kwargs)

    trainer_module.data.loader = timed_loader
    trainer_module.make_pair = timers.wrap("data: LR and tables", make_pair)
    torch.Tensor.backward = timed_backward
    torch.nn.utils.clip_grad_norm_ = timers.wrap("optimizer: clipping", clip)
    try:
        yield
    finally:
        trainer_module.data.loader, trainer_module.make_pair = loader, make_pair
        torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = backward, clip


def set_layout(trainer: Trainer, channels_last: bool) -> None:
    """All of a trainer's networks in channels_last or in the plain layout, whatever its precision chose."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for net in trainer.stage.modules() + list(trainer.ema.values()):
        net.to(memory_format=layout)


def isolated(calls: dict, device: torch.device, precision: str, repeats: int = 3) -> dict:
    """Each network's forward and backward alone on its last inputs (seconds, the best of ``repeats``)."""
    out = {}
    for name, (module, args) in calls.items():
        fwd, bwd = [], []
        for _ in range(repeats):
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            with precisions.autocast(device, precision):
                y = module(*args)
            y = y[0] if isinstance(y, tuple) else y
            mid = time.perf_counter()
            if y.requires_grad:
                y.float().square().mean().backward()
            fwd.append(mid - start)
            bwd.append(time.perf_counter() - mid if y.requires_grad else float("nan"))
        module.zero_grad(set_to_none=True)
        out[name] = (min(fwd), min(bwd))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench step", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="training images (make train's ../shared/data/ucmerced/train)")
    ap.add_argument("--init", help="stage 1's --init (make train: resources/models/latentsr-rgb)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch", type=int, default=recipe.RUN["batch"])
    ap.add_argument("--crop", type=int, default=recipe.RUN["crop"])
    ap.add_argument("--steps", type=int, default=5, help="steps per configuration and round (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, the first a warm-up (default %(default)s)")
    ap.add_argument("--precisions", nargs="+", default=["float32", "bf16"], choices=("float32", "bf16"))
    ap.add_argument("--channels-last", choices=("no", "yes", "both"), default="both")
    ap.add_argument("--channels", type=int, help="stage 1's decoder trunk channels (default: the recipe's; a narrower "
                                                 "--init decoder is widened to it, training.widen)")
    stages = (Stage1.name, LCMSRStage.name)
    ap.add_argument("--stages", nargs="+", default=list(stages), choices=stages)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("training.trainer").setLevel(logging.WARNING)
    layouts = {"no": [False], "yes": [True], "both": [False, True]}[args.channels_last]
    configs = [(p, cl) for p in args.precisions for cl in layouts]
    lines = []
    with tempfile.TemporaryDirectory(prefix="latentsr-step-") as tmp:
        stage1_dir = None
        for stage_name in args.stages:
            runs = {}
            for prec, cl in configs:
                out = Path(tmp) / f"{stage_name}-{prec}-{int(cl)}"
                first = stage_name == "stage1"
                options = (dict(STAGE1_OPTIONS, init=args.init, **({"channels": args.channels} if args.channels else {}))
                           if first else dict(recipe.STAGE2["options"]))
                settings = Settings(data=args.data, out=str(out), steps=0, schedule_steps=10 ** 6, batch=args.batch,
                                    lr=(recipe.STAGE1 if first else recipe.STAGE2)["lr"], warmup=recipe.RUN["warmup"],
                                    ckpt_every=10 ** 9, val_every=10 ** 9, crop=args.crop, preset=args.preset, progress=False,
                                    stage1=stage1_dir, options=options, precision=prec,
                                    latent=16)
                if stage_name == "stage1" and stage1_dir is None:
                    stage1_dir = str(out)
                t = Trainer(Stage1 if stage_name == "stage1" else LCMSRStage, settings)
                set_layout(t, cl)
                t.checkpoint = lambda: None  # run() ends with one; only stage 1's first run writes it, once, below
                timers, calls = Timers(), {}
                instrument(t, timers, calls)
                runs[(prec, cl)] = (t, timers, calls)
            totals = {c: defaultdict(float) for c in configs}
            counted = {c: 0 for c in configs}
            steps = {c: [] for c in configs}  # each counted step's wall time but a chunk's first (it builds the loader)
            for r in range(args.rounds):
                for c in configs:
                    t, timers, _ = runs[c]
                    stamps = []
                    t.report = lambda step, loss, val, stamps=stamps: stamps.append(time.perf_counter())
                    with patched(timers):
                        timers.seconds.clear()
                        before = t.seconds
                        t.s.steps = t.step + args.steps
                        t.run()
                        timers.seconds["total"] = t.seconds - before
                    if r > 0:
                        for k, v in timers.seconds.items():
                            totals[c][k] += v
                        counted[c] += args.steps
                        steps[c] += [b - a for a, b in zip(stamps, stamps[1:])]
            if stage_name == "stage1":  # the model folder that the LCMSR runs start from
                Trainer.checkpoint(runs[configs[0]][0])
            lines += report(stage_name, args, configs, totals, counted, steps, runs)
    print("\n".join(lines))
    return 0


def report(stage_name, args, configs, totals, counted, steps, runs) -> list[str]:
    def label(c):
        return f"{c[0]}{', channels_last' if c[1] else ''}"

    names = sorted({k for c in configs for k in totals[c]} - {"total"})
    head = f"### {stage_name}: ms per step (batch {args.batch} of {args.crop}², preset {args.preset}, " \
           f"{(args.rounds - 1) * args.steps} steps per configuration)"
    lines = ["", head, "", "| phase | " + " | ".join(label(c) for c in configs) + " |",
             "|---|" + "---:|" * len(configs)]
    for k in names + ["total"]:
        lines.append(f"| {k} | " + " | ".join(f"{1000 * totals[c].get(k, 0.0) / counted[c]:.0f}" for c in configs) + " |")
    other = {c: totals[c]["total"] - sum(v for k, v in totals[c].items() if k != "total" and "(in loss)" not in k)
             for c in configs}
    lines.append("| other: EMA, bookkeeping | " + " | ".join(f"{1000 * other[c] / counted[c]:.0f}" for c in configs) + " |")
    lines.append("| samples / s | " + " | ".join(f"{args.batch * counted[c] / totals[c]['total']:.2f}" for c in configs) + " |")
    base = configs[0]
    if all(steps[c] for c in configs):
        median = {c: sorted(steps[c])[len(steps[c]) // 2] for c in configs}
        lines.append("| median step (ms) | " + " | ".join(f"{1000 * median[c]:.0f}" for c in configs) + " |")
        lines.append("| fastest step (ms) | " + " | ".join(f"{1000 * min(steps[c]):.0f}" for c in configs) + " |")
        lines.append(f"| median speed against {label(base)} | " + " | ".join(
            f"{median[base] / median[c]:.2f}×" for c in configs) + " |")
    lines.append(f"| speed against {label(base)} | " + " | ".join(
        f"{totals[base]['total'] / counted[base] / (totals[c]['total'] / counted[c]):.2f}×" for c in configs) + " |")
    lines += ["", "Each network alone (ms, forward / backward, the best of 3):", "",
              "| network | " + " | ".join(label(c) for c in configs) + " |", "|---|" + "---:|" * len(configs)]
    alone = {c: isolated(runs[c][2], runs[c][0].device, c[0]) for c in configs}
    for name in sorted(runs[base][2]):
        lines.append(f"| {name} | " + " | ".join(
            f"{1000 * alone[c][name][0]:.0f} / {1000 * alone[c][name][1]:.0f}" if name in alone[c] else "—"
            for c in configs) + " |")
    return lines
