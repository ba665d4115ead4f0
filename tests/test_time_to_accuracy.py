"""Time to accuracy: --monitor-test only watches, the tutorial pipeline, the harness and the GPU check script."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import part1_scratch_cnn as part1
from common.data import DataError, load_or_create_split
from common.runs import load_checkpoint
from conftest import ROOT, tiny_args

sys.path.insert(0, str(ROOT / "bench"))
import tutorial  # noqa: E402

FAST = ["--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--jitter", "0", "--warmup-epochs", "0"]


def train_part1(dataset: Path, out: Path, *extra: str) -> Path:
    part1.main(part1.get_args_parser().parse_args(tiny_args(dataset, out, *FAST, *extra)))
    (run,) = [p for p in out.iterdir() if p.is_dir() and "scratch_cnn" in p.name]
    return run


def test_monitor_test_records_test_accuracy_and_changes_nothing_else(dataset, tmp_path):
    plain = train_part1(dataset, tmp_path / "plain")
    watched = train_part1(dataset, tmp_path / "watched", "--monitor-test")
    mp, mw = (json.loads((r / "metrics.json").read_text()) for r in (plain, watched))
    assert mw["best_epoch"] == mp["best_epoch"] and mw["epochs_run"] == mp["epochs_run"] == 2
    assert mw["test_acc"] == mp["test_acc"] and mw["best_val_acc"] == mp["best_val_acc"]
    assert [h["val_acc"] for h in mw["history"]] == [h["val_acc"] for h in mp["history"]]
    assert [h["train_loss"] for h in mw["history"]] == [h["train_loss"] for h in mp["history"]]
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(plain / name), load_checkpoint(watched / name)
        assert a["best_epoch"] == b["best_epoch"] and a["epoch"] == b["epoch"]
        assert a["model_state"].keys() == b["model_state"].keys()
        assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"]), name
    assert all("test_acc" not in h for h in mp["history"])
    accs = [h["test_acc"] for h in mw["history"]]
    assert all(0 <= a <= 1 for a in accs)
    # The best epoch's monitored figure is the final test of best.pt: the same weights, the same images.
    assert accs[mw["best_epoch"] - 1] == pytest.approx(mw["test_acc"])
    for m in (mp, mw):
        elapsed = [h["elapsed_s"] for h in m["history"]]
        assert 0 < elapsed[0] < elapsed[1]


def tiny_split(dataset: Path, tmp_path: Path):
    split, _ = load_or_create_split(dataset, tmp_path / "split.json", 20, (12, 4, 4), 0, 72, 2, log=lambda *_: None)
    return split


def test_tutorial_reads_the_saved_splits_files_and_labels(dataset, tmp_path):
    split = tiny_split(dataset, tmp_path)
    samples = tutorial.split_samples(dataset, split)
    for subset, idx in split.indices.items():
        assert [Path(p) for p, _ in samples[subset]] == [dataset / split.entries[i]["path"] for i in idx]
        assert [y for _, y in samples[subset]] == split.labels[idx].tolist()
    (dataset / split.entries[0]["path"]).unlink()
    with pytest.raises(DataError, match="missing"):
        tutorial.split_samples(dataset, split)


def test_tutorial_trains_tests_every_epoch_and_writes_progress(dataset, tmp_path):
    split = tiny_split(dataset, tmp_path)
    config = tutorial.TutorialConfig("scratch_cnn", epochs=2, lr=3e-3, batch_size=16, resize=72, crop=64,
                                     device="cpu")
    rows = tutorial.run(config, dataset, split, tmp_path / "progress.json", log=lambda *_: None)
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert saved["rows"] == rows and saved["config"]["workers"] == 2 and saved["lr"] == 3e-3
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["test_acc"] <= 1 and 0 <= r["val_acc"] <= 1 and r["train_img_per_s"] > 0 for r in rows)
    assert 0 < rows[0]["elapsed_s"] < rows[1]["elapsed_s"]
