"""Data-parallel training under torchrun (gloo on CPU): two ranks with the same global batch make
the same update as one process, keep identical states, and their checkpoint resumes on one rank."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import distributed
from training.cli import main
from training.data import StepBatches

from .test_training import images, stage1, train_args  # noqa: F401 (fixtures)

ROOT = Path(__file__).parent.parent
WORKER = Path(__file__).parent / "ddp_worker.py"
EXTRA = {"stage1": ["--gan-weight", "0.1", "--gan-start", "1"], "lcmsr": [], "e2diffsr": []}
TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # the single-process runs on one thread, as each rank runs


def test_single_process_is_unchanged():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.share(8) == range(8)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(distributed.sample(torch.randn, (4, 2), generator=g), torch.randn(4, 2, generator=g.manual_seed(3)))
    x = torch.randn(64)
    assert distributed.std(x) == x.std()
    shares = [list(StepBatches(5, 7, 6, range(k, k + 3))) for k in (0, 3)]
    assert [a + b for a, b in zip(*shares)] == list(StepBatches(5, 7, 6))


def checkpoint(run: Path) -> tuple[dict, dict]:
    return load_file(str(run / "checkpoint.safetensors")), json.loads((run / "checkpoint.json").read_text())


def assert_same_run(a: Path, b: Path) -> float:
    """The two runs' checkpoints agree to TOLERANCE (weights, EMA, optimizer states, losses); the
    largest weight difference."""
    (ta, sa), (tb, sb) = checkpoint(a), checkpoint(b)
    assert ta.keys() == tb.keys() and sa["step"] == sb["step"]
    worst = max((ta[k].double() - tb[k].double()).abs().max().item() for k in ta if ta[k].is_floating_point())
    assert worst < TOLERANCE, (a.name, worst)
    for (step_a, loss_a), (step_b, loss_b) in zip(sa["history"]["loss"], sb["history"]["loss"], strict=True):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, rel=TOLERANCE)
    assert [v[0] for v in sa["history"]["val"]] == [v[0] for v in sb["history"]["val"]]
    return worst


def test_two_ranks_match_one_process_and_resume_on_one(images, stage1, tmp_path):  # noqa: F811
    """Slow (15–30 s on two busy cores) and kept whole: one torchrun of two rank processes (each
    imports torch and starts a process group) runs all three stages and the refused odd batch, so
    that each stage's two-rank run is compared with one process's, and stage 1's resumes on one."""

    def args(stage, out, steps, *more):
        return train_args(stage, images, out, steps, "--batch", "4", "--schedule-steps", "3", *EXTRA[stage],
                          *(["--stage1", str(stage1)] if stage != "stage1" else []), *more)

    commands = [[0, args(stage, tmp_path / "two" / stage, 2)] for stage in EXTRA]
    commands.append([2, args("stage1", tmp_path / "odd", 2, "--batch", "3")])
    (tmp_path / "commands.json").write_text(json.dumps(commands))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(WORKER), str(tmp_path / "commands.json")],
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "error: --batch 3 does not split evenly over 2 ranks" in done.stderr
    assert not (tmp_path / "odd").exists()
    for stage in EXTRA:
        assert main(args(stage, tmp_path / "one" / stage, 2)) == 0
        assert_same_run(tmp_path / "one" / stage, tmp_path / "two" / stage)
    # the two-rank checkpoint resumes on one process as the one-process run does
    for run in ("one", "two"):
        assert main(args("stage1", tmp_path / run / "stage1", 3, "--resume")) == 0
    assert_same_run(tmp_path / "one" / "stage1", tmp_path / "two" / "stage1")
