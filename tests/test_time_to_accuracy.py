"""Time to accuracy: --monitor-test only watches, the tutorial pipeline, the harness and the GPU check script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import part1_scratch_cnn as part1
from common.data import DataError, load_or_create_split
from common.runs import load_checkpoint
from conftest import ROOT, tiny_args

sys.path.insert(0, str(ROOT / "bench"))
import gpu_collect  # noqa: E402
import time_to_accuracy as tta  # noqa: E402
import tutorial  # noqa: E402

FAST = ["--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--jitter", "0", "--warmup-epochs", "0",
        "--per-class", "10", "--split", "6,2,2"]  # the smallest split that still has a best epoch to choose


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
    split, _ = load_or_create_split(dataset, tmp_path / "split.json", 10, (6, 2, 2), 0, 72, 2, log=lambda *_: None)
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


def harness_args(dataset: Path, tmp_path: Path, *extra: str):
    tiny_split(dataset, tmp_path)
    return tta.get_args_parser().parse_args([
        "--data-dir", str(dataset), "--split-file", str(tmp_path / "split.json"), "--variants", "scratch_cnn:full",
        "--img-size", "72", "--crop-size", "64", "--batch-size", "16", "--device", "cpu", "--poll-s", "0.2",
        "--results-dir", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work"),
        "--ours-args", "scratch_cnn:full=--low-res 64", *extra])  # the recipe's 160 px is over the tiny crop


def test_harness_times_ours_and_the_tutorial_to_a_target_from_a_cold_start(dataset, tmp_path):
    args = harness_args(dataset, tmp_path, "--targets", "scratch_cnn:full=0.05", "--epochs", "scratch_cnn:full=40",
                        "--cap-min", "3")
    tta.main(args)
    (json_file,) = (tmp_path / "results").glob("time-to-accuracy-cpu-*.json")
    result = json.loads(json_file.read_text())
    (entry,) = result["variants"]
    for pipeline in ("ours", "tutorial"):
        run = entry[pipeline]
        # A trivially low target: reached at the first epoch, and the run is stopped soon after, not trained on
        # to its 40 epochs (a tiny epoch can end inside one poll, so a second one may be in the rows).
        assert run["status"] == "reached" and run["epoch_reached"] == 1 and 1 <= run["epochs_run"] < 10, run
        assert 0 < run["startup_s"] < run["time_to_target_s"] <= run["wall_s"]
        assert run["rows"][0]["time_s"] == run["time_to_target_s"] and run["stopped"] == "target"
    assert "part1_scratch_cnn.py" in entry["ours"]["command"] and "--monitor-test" in entry["ours"]["command"]
    assert "bench/tutorial.py" in entry["tutorial"]["command"]
    assert entry["ratio"]["time_to_target"] == pytest.approx(
        entry["tutorial"]["time_to_target_s"] / entry["ours"]["time_to_target_s"])
    assert result["machine"]["cores"] and result["machine"]["torch"] == str(torch.__version__)
    assert result["settings"]["cap_min"] == 3 and result["settings"]["split_fingerprint"]
    md = json_file.with_suffix(".md").read_text()
    assert "| scratch_cnn:full | 0.05 | " in md and "(epoch 1)" in md
    # Ours trains with the cpu plan's recipe flags, then the command line's, and the report says which.
    assert "--low-res 160 --low-res-epochs 15 --low-res 64" in entry["ours"]["command"]
    assert "Ours' recipe flags: scratch_cnn:full `--low-res 160 --low-res-epochs 15 --low-res 64`." in md
    assert not any((tmp_path / "work").iterdir())  # each cold run's folder is removed after it


def test_a_run_past_its_cap_is_reported_not_reached(dataset, tmp_path):
    args = harness_args(dataset, tmp_path, "--pipelines", "ours", "--cap-min", "0.005")
    tta.main(args)
    (entry,) = json.loads(next((tmp_path / "results").glob("*.json")).read_text())["variants"]
    assert entry["ours"]["status"] == "not reached" and entry["ours"]["stopped"] == "cap"
    assert entry["ours"]["text"] == "not reached in 0.005 min" and entry["ours"]["epochs_run"] == 0
    assert "tutorial" not in entry and entry["ratio"] == {}
    assert "not reached in 0.005 min" in next((tmp_path / "results").glob("*.md")).read_text()


def test_weights_that_do_not_resolve_give_per_epoch_cost_only(tmp_path):
    assert tta.resolve_weights("scratch_cnn", "imagenet") == ("none", None)
    assert tta.resolve_weights("resnet18", "none")[0] == "none"
    weights, why = tta.resolve_weights("mobilenet_v2", str(tmp_path / "missing.pth"))
    assert weights == "none" and "no such file" in why
    good = tmp_path / "mnv2.pth"
    import torchvision
    torch.save(torchvision.models.mobilenet_v2().state_dict(), good)
    assert tta.resolve_weights("mobilenet_v2", str(good)) == (str(good.resolve()), None)
    args = tta.get_args_parser().parse_args(["--per-epoch-epochs", "2", "--ours-args", "resnet18:full=--lr 1e-3"])
    runs = tta.plan_runs("resnet18:full", args, {"resnet18": ("none", "resnet18: offline")}, ["ours", "tutorial"])
    assert [(r.pipeline, r.target, r.epochs, r.weights) for r in runs] == [("ours", None, 2, "none"),
                                                                           ("tutorial", None, 2, "none")]
    assert runs[0].extra == ["--lr", "1e-3"] and runs[1].extra == []


def fake_outcome(run, rows, startup=2.0, stopped="finished", returncode=0, wall=100.0):
    watched = {"rows": rows, "startup_s": startup, "wall_s": wall, "stopped": stopped, "returncode": returncode,
               "log_tail": ["last line"]}
    return tta.outcome(run, watched, 30, ["python", "x.py"])


def test_outcomes_ratios_and_the_report():
    v = tta.VARIANTS["mobilenet_v2:full"]
    rows = [{"epoch": e, "elapsed_s": 10.0 * e, "epoch_seconds": 9.0, "train_img_per_s": 30.0, "val_acc": a,
             "test_acc": a} for e, a in ((1, 0.9), (2, 0.96), (3, 0.97))]
    ours = fake_outcome(tta.Run(v, "ours", "w", 0.95, 15), rows[:2], stopped="target")
    assert ours["time_to_target_s"] == 22.0 and ours["epoch_reached"] == 2 and ours["text"] == "22 s (epoch 2)"
    tut = fake_outcome(tta.Run(v, "tutorial", "w", 0.95, 15), rows[:1], stopped="cap", returncode=None, wall=1800.0)
    assert tut["status"] == "not reached" and tut["text"] == "not reached in 30 min"
    failed = fake_outcome(tta.Run(v, "ours", "w", 0.95, 15), [], returncode=1)
    assert failed["status"] == "failed" and "last line" in failed["text"]
    entry = {"variant": v.name, "target": 0.95, "ours": ours, "tutorial": tut}
    entry["ratio"] = tta.ratio(entry)
    assert entry["ratio"] == {"time_to_target_at_least": pytest.approx(1800 / 22)}
    r18 = tta.VARIANTS["resnet18:full"]
    per_epoch = {"variant": r18.name, "target": None, "note": "resnet18: offline",
                 "ours": fake_outcome(tta.Run(r18, "ours", "none", None, 1), rows[:1]),
                 "tutorial": fake_outcome(tta.Run(r18, "tutorial", "none", None, 1),
                                          [{**rows[0], "epoch_seconds": 45.0}])}
    per_epoch["ratio"] = tta.ratio(per_epoch)
    assert per_epoch["ours"]["status"] == "per-epoch" and per_epoch["ratio"]["s_per_epoch"] == 5.0
    result = {"date": "2026-12-01", "variants": [entry, per_epoch],
              "machine": {"cpu": "Some CPU", "cores": 2, "torch": "2.x", "threads": 2, "gpu": None,
                          "load_avg_start": [1.0, 1.0, 1.0]},
              "settings": {"split_file": "runs/split.json", "split_sizes": "300,75,75", "split_fingerprint": "ab" * 8,
                           "batch_size": 32, "crop_size": 224, "cap_min": 30, "device": "cpu", "loader_workers": 2}}
    md = tta.markdown(result)
    assert "| mobilenet_v2:full | 0.95 | 22 s (epoch 2) | 2 | not reached in 30 min | 1 | > 81.8x |" in md
    assert "--weights none (random initialisation)" in md and "resnet18: offline" in md
    assert "| resnet18:full | 9.0 | 12.0 | 45.0 | 12.0 | 5.0x |" in md


GPU_CHECK = ROOT / "bench" / "gpu_check.sh"


def test_gpu_check_script_parses_and_is_executable():
    assert os.access(GPU_CHECK, os.X_OK)
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True).returncode == 0
    assert "set -euo pipefail" in GPU_CHECK.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without CUDA")
def test_gpu_check_fails_fast_in_one_line_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path / "work"), "RESULTS_DIR": str(tmp_path)}
    r = subprocess.run([str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device is visible"), lines
    assert not (tmp_path / "work").exists() and not list(tmp_path.iterdir())  # nothing started, nothing written


def test_gpu_collect_gathers_steps_runs_and_throughput(tmp_path):
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "steps.tsv").write_text("cuda-tests\tok\t12\t0\nresnet18-full\ttimed out (35s)\t37\t124\n")
    (work / "logs" / "cuda-tests.log").write_text("....\n5 passed in 9.1s\n")
    run = work / "runs" / "20261201-000000-resnet18-full-gpucheck"
    run.mkdir(parents=True)
    metrics = {"arch": "resnet18", "mode": "full", "epochs_run": 2, "batch_size": 256, "lr": 1e-4,
               "best_val_acc": 0.9, "test_acc": 0.88, "seconds_per_epoch": 0.4, "train_img_per_s": 12000.0,
               "eval_img_per_s": 30000.0, "peak_memory_mb": 5000.0, "device": "cuda"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.json").write_text(json.dumps({"amp": True, "weights": {"source": "none (random)"}}))
    (work / "throughput").mkdir()
    (work / "throughput" / "cuda-2026-12-01.json").write_text(json.dumps({"device": "cuda"}))
    (work / "throughput" / "cuda-2026-12-01.md").write_text("| data path | img/s |\n")
    args = gpu_collect.get_args_parser().parse_args(["--work", str(work), "--gpu-name", "NVIDIA H200",
                                                     "--results-dir", str(tmp_path / "results"), "--note", "a note"])
    assert gpu_collect.main(args) == 0
    (json_file,) = (tmp_path / "results").glob("nvidia-h200-*.json")
    report = json.loads(json_file.read_text())
    assert [s["status"] for s in report["steps"]] == ["ok", "timed out (35s)"] and report["total_s"] == 49
    assert report["steps"][0]["last_line"] == "5 passed in 9.1s"
    assert report["runs"][0]["train_img_per_s"] == 12000.0 and report["runs"][0]["amp"] is True
    md = json_file.with_suffix(".md").read_text()
    assert "| resnet18 | full | 256 | 0.4 | 12000 |" in md and "meets the aim of 10,000" in md
    assert "- a note" in md and "| data path | img/s |" in md
