"""torchrun with DistributedDataParallel on the CPU (gloo, 2 processes on loopback) against one process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from common.distributed import init_distributed, is_main, rank, world_size
from common.runs import load_checkpoint
from conftest import ROOT, tiny_args

# ResNet-18 fc mode: frozen BatchNorm in eval mode and no dropout, so two processes with batch 8
# must follow one process with batch 16 step for step (SyncBatchNorm needs GPUs).
# float32 (--amp off): bf16 steps round differently when each process sees half the batch, and this test is about
# the processes adding up to one, not about precision.
COMMON = ["--mode", "fc", "--weights", "none", "--no-augment", "--sched", "none", "--lr", "3e-3",
          "--label-smoothing", "0", "--amp", "off"]


# Runs part2_resnet18.py, but rank 0 dies (os._exit, like SIGKILL) right after last.pt of the first epoch.
DIE_AFTER_FIRST_EPOCH = """
import os, runpy, sys
sys.path.insert(0, sys.argv.pop(1))
from common import runs
real_save = runs.save_checkpoint
def save_then_die(obj, path):
    real_save(obj, path)
    if path.name == "last.pt" and obj["epoch"] == 0:
        os._exit(9)
runs.save_checkpoint = save_then_die
sys.argv[0] = os.path.join(sys.path[0], "part2_resnet18.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(argv: list[str], nproc: int = 1, script: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    script = script or str(ROOT / "part2_resnet18.py")
    cmd = [sys.executable, script, *argv] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0 and "Address already in use" in proc.stderr:
        pytest.skip("no free loopback port for torchrun's rendezvous")
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    return proc


def runs_in(out):
    return [p for p in out.iterdir() if p.is_dir() and p.name.endswith("resnet18-fc")]


def test_two_processes_match_one_and_resume(dataset, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    run(tiny_args(dataset, single, *COMMON, "--epochs", "2", "--batch-size", "16"))
    die = tmp_path / "die_after_first_epoch.py"
    die.write_text(DIE_AFTER_FIRST_EPOCH)
    argv = tiny_args(dataset, multi, *COMMON, "--epochs", "2", "--batch-size", "8")
    run([str(ROOT), *argv], nproc=2, script=str(die), ok=False)
    (run_dir,) = runs_in(multi)  # only rank 0 writes a run folder
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 0 and not (run_dir / "metrics.json").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2
    # Continue the two-process run to epoch 2 after the kill at the end of epoch 1.
    run(tiny_args(dataset, multi, *COMMON, "--epochs", "2", "--batch-size", "8", "--resume",
                  str(run_dir / "last.pt")), nproc=2)
    assert runs_in(multi) == [run_dir] and (multi / "best.pt").exists()
    a = load_checkpoint(runs_in(single)[0] / "last.pt")
    b = load_checkpoint(run_dir / "last.pt")
    assert b["epoch"] == 1 and len(b["rng"]) == 2
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(b["model_state"][key], a["model_state"][key], rtol=1e-4, atol=1e-5)
    assert [h["val_acc"] for h in b["history"]] == pytest.approx([h["val_acc"] for h in a["history"]])
    assert [h["train_loss"] for h in b["history"]] == pytest.approx([h["train_loss"] for h in a["history"]], rel=1e-4)
    ma = json.loads((runs_in(single)[0] / "metrics.json").read_text())
    mb = json.loads((run_dir / "metrics.json").read_text())
    assert mb["test_acc"] == pytest.approx(ma["test_acc"]) and mb["resumed_from_epoch"] == 1


@pytest.mark.parametrize("env", [{}, {"RANK": "0", "WORLD_SIZE": "1"}])
def test_a_single_process_joins_no_group(monkeypatch, env):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    init_distributed("cpu")
    assert not torch.distributed.is_initialized() and (rank(), world_size(), is_main()) == (0, 1, True)
