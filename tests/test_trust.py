"""Results that cannot be silently wrong: resume only what can be resumed, one global best per split, checked
options."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import part1_scratch_cnn as part1
from common.runs import CheckpointError, CheckpointSaver, load_checkpoint, update_global_best
from conftest import ROOT, make_dataset, refusal, tiny_args

FAST = ["--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--jitter", "0", "--warmup-epochs", "0"]


def run_part1(argv: list[str]) -> None:
    part1.main(part1.get_args_parser().parse_args(argv))


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name != "cache")


def cli(script: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture
def finished(dataset, tmp_path) -> tuple[Path, Path]:
    """A finished two-epoch run: (runs folder, run folder)."""
    out = tmp_path / "runs"
    run_part1(tiny_args(dataset, out, *FAST))
    return out, run_dirs(out)[0]


def test_resume_accepts_only_a_runs_own_unfinished_last_pt(dataset, finished):
    out, run = finished
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(CheckpointError, match="not a run's last.pt"):
        run_part1(tiny_args(dataset, out, *FAST, "--resume", str(out / "best.pt")))
    with pytest.raises(CheckpointError, match="not a run's last.pt"):
        run_part1(tiny_args(dataset, out, *FAST, "--resume", str(run / "best.pt")))
    with pytest.raises(CheckpointError, match="is finished"):
        run_part1(tiny_args(dataset, out, *FAST[:1], "3", *FAST[2:], "--resume", str(run / "last.pt")))
    # Nothing was written into runs/ itself, and the global best is untouched.
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not (out / "config.json").exists() and not (out / "last.pt").exists()


def test_resume_with_other_training_options_is_refused(dataset, finished):
    out, run = finished
    (run / "metrics.json").unlink()  # as if killed before the test pass
    with pytest.raises(CheckpointError, match="--epochs 2 \\(now 5\\)"):
        run_part1(tiny_args(dataset, out, *FAST[:1], "5", *FAST[2:], "--resume", str(run / "last.pt")))
    with pytest.raises(CheckpointError, match="--lr 0.003 \\(now 0.01\\)"):
        run_part1(tiny_args(dataset, out, *FAST[:5], "1e-2", *FAST[6:], "--resume", str(run / "last.pt")))
    # The same options (and another --workers) finish it.
    run_part1(tiny_args(dataset, out, *FAST, "--workers", "1", "--resume", str(run / "last.pt")))
    assert json.loads((run / "metrics.json").read_text())["resumed_from_epoch"] == 2


def test_global_best_ignores_runs_on_another_split_or_classes(dataset, tmp_path):
    out = tmp_path / "runs"
    run_part1(tiny_args(dataset, out, "--epochs", "1"))
    (run,) = run_dirs(out)
    three = make_dataset(tmp_path / "three", classes=["cane", "gatto", "ragno"])
    # A 3-class run on its own split file, in the same runs/ folder.
    run_part1(tiny_args(three, out, "--epochs", "2", "--batch-size", "8", "--jitter", "0",
                        "--split-file", str(tmp_path / "three-split.json")))
    (other,) = [p for p in run_dirs(out) if p != run]
    config = json.loads((other / "config.json").read_text())
    assert len(config["classes"]) == 3
    for folder, acc in ((run, 0.1), (other, 0.99)):  # whatever the tiny runs reached: the other one is better
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "best_val_acc": acc}))
    update_global_best(out, config["split_fingerprint"], config["classes"], log=lambda *a: None)  # as its end does
    best = json.loads((out / "best.json").read_text())
    assert best["run_dir"] == str(run) and len(best["classes"]) == 10 and best["val_acc"] == 0.1
    assert (out / "best.pt").read_bytes() == (run / "best.pt").read_bytes()


def fake_run(out: Path, name: str, val_acc: float, fingerprint: str = "f" * 64) -> Path:
    run = out / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"split_fingerprint": fingerprint, "classes": ["a", "b"]}))
    (run / "metrics.json").write_text(json.dumps({"best_val_acc": val_acc}))
    (run / "best.pt").write_bytes(name.encode() * 1000)
    return run


# Each process updates the global best once per run it "finished", as fit does at the end of a run.
WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from common.runs import update_global_best
for _ in sys.argv[3:]:
    update_global_best(Path(sys.argv[2]), "f" * 64, ["a", "b"], log=lambda *a: None)
"""


def test_concurrent_global_best_updates_leave_the_best_run(tmp_path):
    out = tmp_path / "runs"
    accs = [0.5 + 0.01 * i for i in range(24)]
    for i, acc in enumerate(accs):
        fake_run(out, f"run{i:02d}", acc)
    names = [f"run{i:02d}" for i in range(24)]
    for _ in range(5):
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(ROOT), str(out), *names[k::2]])
                 for k in range(2)]
        assert all(p.wait(timeout=120) == 0 for p in procs)
        best = json.loads((out / "best.json").read_text())
        assert best["run_dir"] == str(out / "run23") and best["val_acc"] == accs[-1]
        assert (out / "best.pt").read_bytes() == (out / "run23" / "best.pt").read_bytes()


def test_global_best_follows_the_runs_on_disk(tmp_path):
    out = tmp_path / "runs"
    fake_run(out, "a", 0.7)
    fake_run(out, "b", 0.9, fingerprint="0" * 64)  # another split: never a candidate
    update_global_best(out, "f" * 64, ["a", "b"], log=lambda *a: None)
    assert json.loads((out / "best.json").read_text())["run_dir"] == str(out / "a")
    (out / "best.pt").write_bytes(b"stale")  # a kill between the two writes of an earlier update
    update_global_best(out, "f" * 64, ["a", "b"], log=lambda *a: None)
    assert (out / "best.pt").read_bytes() == (out / "a" / "best.pt").read_bytes()


@pytest.mark.parametrize("script, extra, flag", [
    ("part1_scratch_cnn.py", ["--epochs", "0"], "--epochs"),
    ("part1_scratch_cnn.py", ["--epochs", "-3"], "--epochs"),
    ("part1_scratch_cnn.py", ["--lr", "0"], "--lr"),
    ("part1_scratch_cnn.py", ["--lr", "-1e-3"], "--lr"),
    ("part1_scratch_cnn.py", ["--batch-size", "0"], "--batch-size"),
    ("part1_scratch_cnn.py", ["--batch-size", "-8"], "--batch-size"),
    ("part1_scratch_cnn.py", ["--label-smoothing", "1"], "--label-smoothing"),
    ("part1_scratch_cnn.py", ["--label-smoothing", "-0.1"], "--label-smoothing"),
    ("part1_scratch_cnn.py", ["--dropout", "1.5"], "--dropout"),
    ("part1_scratch_cnn.py", ["--mixup", "-1"], "--mixup"),
    ("part1_scratch_cnn.py", ["--cutmix", "-0.5"], "--cutmix"),
    ("part1_scratch_cnn.py", ["--img-size", "0"], "--img-size"),
    ("part1_scratch_cnn.py", ["--img-size", "72", "--crop-size", "56"], "--crop-size"),
    ("part1_scratch_cnn.py", ["--epochs", "two"], "--epochs"),
    ("part2_mobilenet.py", ["--lr", "0", "--weights", "none"], "--lr"),
    ("part2_resnet18.py", ["--batch-size", "0", "--weights", "none"], "--batch-size"),
])
def test_bad_options_are_refused_when_parsed(dataset, tmp_path, capsys, script, extra, flag):
    out = tmp_path / "runs"
    err = refusal(importlib.import_module(script[:-3]), tiny_args(dataset, out, "--epochs", "1") + extra, capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0], err
    assert not out.exists()  # refused before anything was read or written


def test_a_start_that_fails_leaves_no_run_folder(dataset, tmp_path):
    out = tmp_path / "runs"
    proc = cli("part1_scratch_cnn.py", tiny_args(dataset, out, "--epochs", "1", "--lr", "1e9", "--opt", "sgd",
                                                  "--warmup-epochs", "0", "--label-smoothing", "0"), tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the training loss became")
    assert run_dirs(out) == []


def test_stale_temp_files_of_a_killed_write_are_removed_on_the_next_start(dataset, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".best.pt.{dead.stdout.strip()}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = out / f".best.pt.{__import__('os').getpid()}.def456.tmp"  # a write in progress in a live process
    live.write_bytes(b"being written")
    run_part1(tiny_args(dataset, out, "--epochs", "1"))
    assert not stale.exists() and live.exists()


def test_edited_checkpoint_is_a_clear_error(finished):
    out, run = finished
    ckpt = load_checkpoint(run / "best.pt")
    del ckpt["crop_size"]
    torch.save(ckpt, out / "edited.pt")
    with pytest.raises(CheckpointError, match="lacks crop_size"):
        load_checkpoint(out / "edited.pt")


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    name = tmp_path / "runs" / "20260101-000000-scratch_cnn-full"
    a, b = CheckpointSaver(name, {"run": "a"}), CheckpointSaver(name, {"run": "b"})
    a.commit({"epoch": 0}, improved=True)
    b.commit({"epoch": 0}, improved=True)
    assert a.run_dir != b.run_dir and b.run_dir.name == name.name + "-1"
    assert json.loads((b.run_dir / "config.json").read_text()) == {"run": "b"}
    assert json.loads((a.run_dir / "config.json").read_text()) == {"run": "a"}


DESCRIBE = {"arch": "scratch_cnn", "mode": "full", "classes": ["a", "b"], "split_fingerprint": "f" * 64,
            "img_size": 8, "crop_size": 8, "mean": [0.5] * 3, "std": [0.2] * 3}


def training_state(epoch: int) -> dict:
    return {"model_state": {"w": torch.tensor([float(epoch)])}, "optimizer_state": {}, "scheduler_state": {},
            "rng": []}


def test_saver_keeps_the_best_epoch_and_a_resume_takes_up_its_record(tmp_path):
    out, config = tmp_path / "runs", {"lr": 0.1, "epochs": 3}
    saver = CheckpointSaver(out / "20260101-000000-scratch_cnn-full", config, DESCRIBE)
    rows = [{"val_acc": acc} for acc in (0.5, 0.7, 0.6)]
    assert [saver.save(epoch, row, training_state(epoch)) for epoch, row in enumerate(rows)] == [True, True, False]
    last, best = load_checkpoint(saver.last), load_checkpoint(saver.best)
    assert (last["epoch"], last["best_epoch"], last["best_val_acc"]) == (2, 1, 0.7) and last["history"] == rows
    assert best["epoch"] == 1 and best["model_state"]["w"].item() == 1.0 and best["classes"] == ["a", "b"]
    assert last["config"] == config and last["format"] == "animals10-ckpt/1"
    resumed = CheckpointSaver(out / "20260102-000000-scratch_cnn-full", config, DESCRIBE)
    assert resumed.resume(saver.last, config)["epoch"] == 2
    assert resumed.run_dir == saver.run_dir and resumed.history == rows
    assert (resumed.start_epoch, resumed.best_epoch, resumed.best_acc) == (3, 1, 0.7)
    with pytest.raises(CheckpointError, match="--epochs 3 \\(now 4\\)"):
        CheckpointSaver(out / "new", config, DESCRIBE).resume(saver.last, {**config, "epochs": 4})
    with pytest.raises(CheckpointError, match="another split"):
        CheckpointSaver(out / "new", config, {**DESCRIBE, "split_fingerprint": "0" * 64}).resume(saver.last, config)
    assert run_dirs(out) == [saver.run_dir]  # the refused resumes created nothing


@pytest.mark.parametrize("script, extra, message", [
    ("part1_scratch_cnn", ["--batch-size", "500"], "fewer than --batch-size 500"),
    ("part1_scratch_cnn", ["--sweep", "--lrs", "1e-3", "--batch-sizes", "8,500"], "fewer than --batch-size 500"),
    ("part2_mobilenet", ["--weights", "none", "--mode", "lora", "--lora-rank", "100000"],
     "smallest adapted layer (features.1.conv.1) has rank 16; give --lora-rank 1 to 16"),
    ("part2_mobilenet", ["--weights", "missing.pth"], "no such file"),
    ("part2_resnet18", ["--weights", "none", "--batch-size", "500"], "fewer than --batch-size 500"),
])
def test_refused_starts_write_nothing(dataset, tmp_path, capsys, script, extra, message):
    """Everything is decided before anything is written: no output folder, no split.json, no cache."""
    out = tmp_path / "new" / "runs"
    err = refusal(importlib.import_module(script), tiny_args(dataset, out, "--epochs", "1", *extra), capsys)
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()


def test_a_refused_resume_into_another_output_folder_writes_nothing(dataset, finished, tmp_path, capsys):
    _, run = finished
    (run / "metrics.json").unlink()  # as if killed before the test pass
    other = tmp_path / "other"
    lines = refusal(part1, tiny_args(dataset, other, *FAST, "--resume", str(run / "last.pt")), capsys)
    assert f"pass --output-dir {run.parent}" in lines
    assert not other.exists()
