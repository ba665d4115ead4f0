"""Non-finite numbers never make a result: refused options, diverged runs that leave nothing, strict JSON, and
checkpoints with inf/NaN weights refused by every script that uses a model."""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch

import app
import evaluate
import gradcam
import part1_scratch_cnn as part1
import submit
from common import engine
from common.runs import CheckpointSaver, runs_on_split, write_json
from conftest import make_dataset, one_error_line, refusal, tiny_args

FAST = ["--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--jitter", "0", "--warmup-epochs", "0"]


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name != "cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data, runs folder, a copy of its best.pt whose weights are NaN)."""
    root = tmp_path_factory.mktemp("nonfinite")
    data = make_dataset(root / "raw-img")
    out = root / "runs"
    part1.main(part1.get_args_parser().parse_args(tiny_args(data, out, *FAST)))
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    ckpt["model_state"] = {k: v.fill_(math.nan) if v.is_floating_point() else v
                           for k, v in ckpt["model_state"].items()}
    poisoned = root / "poisoned" / "best.pt"
    poisoned.parent.mkdir()
    torch.save(ckpt, poisoned)
    return data, out, poisoned


@pytest.mark.parametrize("script, flag, value", [
    ("part1_scratch_cnn", "--lr", "inf"), ("part1_scratch_cnn", "--lr", "nan"),
    ("part1_scratch_cnn", "--weight-decay", "inf"), ("part1_scratch_cnn", "--label-smoothing", "nan"),
    ("part2_mobilenet", "--lr", "inf"), ("part2_resnet18", "--weight-decay", "inf"),
])
def test_non_finite_options_are_refused_when_parsed(dataset, tmp_path, capsys, script, flag, value):
    out = tmp_path / "runs"
    one_error_line(importlib.import_module(script), tiny_args(dataset, out, flag, value, "--weights", "none")
                   if script != "part1_scratch_cnn" else tiny_args(dataset, out, flag, value), capsys,
                   flag, "not a finite number")
    assert not out.exists()


def test_non_finite_sweep_rates_are_refused(dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    one_error_line(part1, tiny_args(dataset, out, "--sweep", "--lrs", "1e-3,inf"), capsys, "--lrs", "finite")
    assert not out.exists()


def last_error_line(script, argv: list, capsys, *words: str) -> str:
    """A training run's refusal: progress bars, then one `error: ...` line naming every word, no traceback."""
    err = refusal(script, [str(a) for a in argv], capsys)
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("error: ") and all(w in line for w in words), err
    return line


def nan_weights_after_step(monkeypatch, step: int) -> None:
    """The optimizer step number `step` (1-based) leaves a weight NaN while its loss was finite."""
    real, calls = engine.backward_step, []

    def poisoned(loss, optimizer, scaler=None):
        real(loss, optimizer, scaler)
        calls.append(1)
        if len(calls) == step:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(math.nan)

    monkeypatch.setattr(engine, "backward_step", poisoned)


def test_weights_that_become_nan_on_a_finite_loss_stop_the_run(dataset, tmp_path, monkeypatch, capsys):
    """The last step of a one-epoch run breaks the weights: no run, no run folder, no runs/best.pt."""
    out = tmp_path / "runs"
    nan_weights_after_step(monkeypatch, 7)  # 120 training images in batches of 16: the epoch's last step
    last_error_line(part1, tiny_args(dataset, out, *FAST), capsys, "weights became inf or NaN in epoch 1",
                    "lower --lr")
    assert run_dirs(out) == [] and not (out / "best.pt").exists()


@pytest.mark.parametrize("step, message", [(10, "the training loss became nan"),  # the step after the NaN
                                           (14, "weights became inf or NaN in epoch 2")])  # epoch 2's last step
def test_a_run_that_diverges_later_leaves_no_run_folder(dataset, tmp_path, monkeypatch, capsys, step, message):
    """Epoch 1 was committed (a run folder with last.pt and best.pt); epoch 2 diverges: the folder goes."""
    out = tmp_path / "runs"
    nan_weights_after_step(monkeypatch, step)
    argv = tiny_args(dataset, out, *FAST[:1], "2", *FAST[2:])
    last_error_line(part1, argv, capsys, message)
    assert run_dirs(out) == [] and not (out / "best.pt").exists()


@pytest.mark.parametrize("script", ["evaluate", "gradcam", "submit", "app"])
def test_checkpoints_with_non_finite_weights_are_refused(trained, tmp_path, capsys, script):
    data, _, poisoned = trained
    argv = {"evaluate": ["--ckpt", poisoned, "--out-dir", tmp_path / "e", "--device", "cpu"],
            "gradcam": ["--ckpt", poisoned, "--out-dir", tmp_path / "e", "--device", "cpu",
                        "--faithfulness", "2", "--sanity", "1"],
            "submit": ["--ckpt", poisoned, "--test-dir", data / "cane", "--no-upload", "--out-dir", tmp_path / "e",
                       "--device", "cpu"],
            "app": ["--ckpt", poisoned, "--runs-dir", poisoned.parent, "--port", "0", "--device", "cpu"]}[script]
    module = {"evaluate": evaluate, "gradcam": gradcam, "submit": submit, "app": app}[script]
    one_error_line(module, argv, capsys, "non-finite weights", "lower --lr")
    assert not (tmp_path / "e").exists()


def test_json_is_written_strict(tmp_path):
    path = tmp_path / "faithfulness.json"
    with pytest.raises(ValueError):
        write_json(path, {"deletion_mean": math.nan})
    with pytest.raises(ValueError):
        write_json(path, {"x": [math.inf]})
    assert not path.exists()
    write_json(path, {"x": 1.5})
    assert json.loads(path.read_text()) == {"x": 1.5}


def test_a_non_finite_validation_accuracy_never_becomes_the_best(tmp_path):
    saver = CheckpointSaver(tmp_path / "run", {}, write=False)
    assert saver.save(0, {"val_acc": 0.5}, {}) is True
    assert saver.save(1, {"val_acc": math.nan}, {}) is False
    assert saver.best_acc == 0.5 and saver.best_epoch == 0


def test_a_run_recorded_with_a_nan_accuracy_never_competes_for_the_global_best(tmp_path):
    """metrics.json files that an older version wrote with NaN (json reads it) are not candidates."""
    for name, acc in (("a", "0.5"), ("b", "NaN")):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"split_fingerprint": "f", "classes": ["x"]}))
        (run / "metrics.json").write_text('{"best_val_acc": %s}' % acc)
        (run / "best.pt").write_bytes(b"model")
    assert [r["run_dir"].name for r in runs_on_split(tmp_path, "f", ["x"])] == ["a"]
