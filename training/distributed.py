"""Data-parallel training under ``torchrun``: the process group, the ranks' shares of a batch, and
the DistributedDataParallel replicas of a stage's networks.

``torchrun --nproc_per_node N [--nnodes M ...] -m training ...`` sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; with them (and WORLD_SIZE > 1) a Trainer joins the process group,
gloo on CPU and NCCL on CUDA, with one GPU per process (cuda:LOCAL_RANK). Without them every
function here is the single-process identity, so a plain ``python -m training`` is unchanged.

Each rank takes a contiguous, equal share of the global batch of a step, and its share of every
random tensor the step draws for the batch (drawn whole from the step's generator, then cut), so a
run on N ranks computes the same global batch, and the same update, as one process.
"""
from __future__ import annotations

import atexit
import logging
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .errors import TrainingError

log = logging.getLogger(__name__)


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 when not distributed (from the environment before init)."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes: checkpoints, curves, exports, logs and progress."""
    return rank() == 0


def device(name: str) -> torch.device:
    """The device of this process: under torchrun, CUDA means the GPU cuda:LOCAL_RANK."""
    dev = torch.device(name)
    if launched() and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def init(dev: torch.device) -> None:
    """Join torchrun's process group once (gloo for CPU, NCCL for CUDA); nothing without torchrun."""
    if not launched() or active():
        return
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        if dev.index >= torch.cuda.device_count():
            raise TrainingError(f"local rank {dev.index} has no GPU: this machine has {torch.cuda.device_count()}, "
                                "give --nproc_per_node at most that")
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingError(f"could not join the torchrun process group ({backend}): {first}") from None
    atexit.register(cleanup)
    log.info("rank %d of %d (%s)", rank(), world_size(), backend)


def cleanup() -> None:
    """Leave the process group (also registered at exit)."""
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def share(batch: int) -> range:
    """This rank's sample indices of a global batch of ``batch``: an equal, contiguous share."""
    n = batch // world_size()
    return range(rank() * n, (rank() + 1) * n)


def sample(draw, shape, *args, **kwargs) -> torch.Tensor:
    """``draw(*args, global shape, **kwargs)`` (torch.randn, torch.rand, torch.randint, ...) cut to
    this rank's rows: ``shape`` is the rank's share, its first side the rank's batch."""
    world = world_size()
    if world == 1:
        return draw(*args, tuple(shape), **kwargs)
    n = shape[0]
    whole = draw(*args, (n * world, *shape[1:]), **kwargs)
    return whole[rank() * n:(rank() + 1) * n]


def std(x: torch.Tensor) -> torch.Tensor:
    """The standard deviation (unbiased, no gradient) of ``x`` over the global batch: the ranks'
    equal shares taken together."""
    if world_size() == 1:
        return x.detach().std()
    dtype, x = x.dtype, x.detach().double()
    total = torch.stack([x.sum(), torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device)])
    dist.all_reduce(total)
    mean = total[0] / total[1]
    squares = ((x - mean) ** 2).sum()
    dist.all_reduce(squares)
    return (squares / (total[1] - 1)).sqrt().to(dtype)


def mean(value: float, dev: torch.device) -> float:
    """The mean of a scalar over the ranks (the global batch's loss from the shares' losses)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return float(t) / world_size()


def any_rank(flag: bool, dev: torch.device) -> bool:
    """Whether ``flag`` is true on any rank: a stop that every rank then takes after the same step."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks, without gradient."""
    if world_size() == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world_size()


def average_gradients(params) -> None:
    """Average the gradients of ``params`` over the ranks (a network trained beside the DDP ones,
    such as stage 1's discriminator with its own optimizer)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size())


def same_on_all(value) -> bool:
    """Whether every rank holds the same JSON-able ``value``."""
    if world_size() == 1:
        return True
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


def broadcast(value):
    """Rank 0's JSON-able ``value`` on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_weights(nets: dict) -> None:
    """Rank 0's parameters and buffers of ``nets`` on every rank."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for net in nets.values():
            for t in list(net.parameters()) + list(net.buffers()):
                dist.broadcast(t, src=0)


def replicate(nets: dict, dev: torch.device) -> dict:
    """DistributedDataParallel replicas of ``nets`` (their weights broadcast from rank 0; their
    gradients averaged over the ranks in backward), or ``nets`` itself in a single process."""
    if world_size() == 1:
        return nets
    from torch.nn.parallel import DistributedDataParallel

    ids = [dev.index] if dev.type == "cuda" else None
    return {n: DistributedDataParallel(m, device_ids=ids) for n, m in nets.items()}


@contextmanager
def training_networks(stage, replicas: dict):
    """The stage's losses call its networks through the replicas while inside."""
    own = stage.nets
    stage.nets = replicas
    try:
        yield
    finally:
        stage.nets = own
