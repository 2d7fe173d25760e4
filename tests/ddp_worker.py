"""Run by tests/test_distributed.py under torchrun: each rank runs ``python -m training`` commands
(through training.cli.main, as ``torchrun -m training`` does) and, after each, checks that every rank
holds the same weights, EMA weights and optimizer states (the discriminator's too) as rank 0.

Argument: a JSON file with a list of [expected exit status, argv]. Exit status 1 when a command
returns another status or a rank's state differs from rank 0's.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from training import cli, trainer  # noqa: E402

trainers = []
run = trainer.Trainer.run


def keep(self):
    trainers.append(self)
    run(self)


trainer.Trainer.run = keep


def state(t: trainer.Trainer) -> dict:
    tensors = {f"{prefix}.{n}.{k}": v for prefix, nets in (("model", t.stage.nets), ("ema", t.ema))
               for n, m in nets.items() for k, v in m.state_dict().items()}
    tensors.update(trainer.optimizer_tensors(t.opt.state_dict(), "optim"))
    tensors.update(t.stage.aux_tensors())
    return {k: v.detach().cpu() for k, v in tensors.items()}


def main() -> int:
    for expected, argv in json.loads(open(sys.argv[1]).read()):
        trainers.clear()
        if cli.main(argv) != expected:
            print(f"ddp_worker: {argv[0]} did not exit with {expected}", file=sys.stderr)
            return 1
        if expected:
            continue
        mine = state(trainers[0])
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        for r, theirs in enumerate(every):
            differ = [k for k in mine if not torch.equal(mine[k], theirs[k])]
            if theirs.keys() != mine.keys() or differ:
                print(f"ddp_worker: rank {r} differs from rank {dist.get_rank()} in {argv[0]}: {differ[:3]}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
