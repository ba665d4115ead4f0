"""evaluate.py: metrics, output files, comparison table, and refusals."""
from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import evaluate
import part1_scratch_cnn as part1
from common import plots
from common.metrics import classification_metrics, comparison_tables, confusion, macro_f1
from common.runs import CheckpointError, finished_runs, load_checkpoint, runs_on_split
from conftest import ROOT, make_dataset, one_error_line, tiny_args


def test_metrics_on_hand_made_predictions():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 2, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 8)
    # class a: P 2/3, R 2/4; class b: P 2/3, R 1; class c: P 1/2, R 1/2
    p = [2 / 3, 2 / 3, 1 / 2]
    r = [1 / 2, 1, 1 / 2]
    f = [2 * pi * ri / (pi + ri) for pi, ri in zip(p, r)]
    assert m["macro"]["precision"] == pytest.approx(np.mean(p))
    assert m["macro"]["recall"] == pytest.approx(np.mean(r))
    assert m["macro"]["f1"] == pytest.approx(np.mean(f))
    assert m["weighted"]["f1"] == pytest.approx(np.average(f, weights=[4, 2, 2]))
    assert m["confusion_matrix"] == [[2, 1, 1], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny scratch-CNN runs on synthetic data."""
    root = tmp_path_factory.mktemp("eval")
    data = make_dataset(root / "raw-img")
    out = root / "runs"
    for lr in ("3e-3", "1e-4"):
        part1.main(part1.get_args_parser().parse_args(
            tiny_args(data, out, "--epochs", "2", "--batch-size", "16", "--lr", lr, "--tag", f"lr{lr}")))
    return data, out


@pytest.mark.parametrize("seed", range(5))
def test_training_metrics_match_scikit_learn_with_absent_classes(seed):
    """The numpy confusion matrix and macro F1 the training loop uses, against scikit-learn's."""
    from sklearn.metrics import confusion_matrix, f1_score
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 5, 40), rng.integers(0, 6, 40)  # class 6 never appears; 5 only predicted
    labels = list(range(7))
    assert (confusion(y_true, y_pred, 7) == confusion_matrix(y_true, y_pred, labels=labels)).all()
    assert macro_f1(y_true, y_pred, 7) == pytest.approx(
        f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def test_evaluation_writes_every_output(trained, tmp_path):
    data, out = trained
    result = evaluate.evaluate_checkpoint(evaluate.get_args_parser().parse_args(
        ["--ckpt", str(out / "best.pt"), "--device", "cpu", "--out-dir", str(tmp_path)]))
    for name in ("confusion_matrix.png", "curves.png", "misclassified.png"):
        img = cv2.imread(str(tmp_path / name))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100, name
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["n"] == 40 and np.sum(saved["confusion_matrix"]) == 40
    best_run = json.loads((out / "best.json").read_text())["run_dir"]
    metrics = json.loads((out / best_run.split("/")[-1] / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(metrics["test_acc"])
    assert saved["macro"]["f1"] == pytest.approx(metrics["test_macro_f1"])
    assert len(saved["misclassified"]) == round(40 * (1 - saved["accuracy"]))
    assert result["classes"][0] == "cane" and "dog" in saved["per_class"]


def test_data_dir_evaluation_and_class_mismatch(trained, tmp_path):
    data, out = trained
    holdout = make_dataset(tmp_path / "holdout", classes=["gatto", "cane"], per_class=3, seed=5)
    result = evaluate.evaluate_checkpoint(evaluate.get_args_parser().parse_args(
        ["--ckpt", str(out / "best.pt"), "--data-dir", str(holdout), "--out-dir", str(tmp_path / "o")]))
    assert result["n"] == 6 and (tmp_path / "o" / "confusion_matrix.png").exists()
    other = make_dataset(tmp_path / "pets", classes=["abyssinian", "beagle"], per_class=2)
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--ckpt", str(out / "best.pt"),
                           "--data-dir", str(other)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "['abyssinian', 'beagle'] that the model does not know" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_has_one_row_per_run(trained, tmp_path):
    _, out = trained
    rows = evaluate.compare(out)
    assert len(rows) == 2
    lines = (out / "compare.csv").read_text().strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("run,model,mode,lr")
    for row in rows:
        metrics = json.loads((out / row["run"] / "metrics.json").read_text())
        line = next(line for line in lines if line.startswith(row["run"]))
        fields = line.split(",")
        assert float(fields[6]) == pytest.approx(metrics["best_val_acc"])
        assert float(fields[7]) == pytest.approx(metrics["test_acc"])
        assert float(fields[3]) == metrics["lr"]
    assert [r["best_val_acc"] for r in rows] == sorted((r["best_val_acc"] for r in rows), reverse=True)
    assert (out / "compare.md").read_text().count("\n") == 4
    for name in ("compare_val_acc.png", "compare_test_acc_vs_time.png"):
        assert cv2.imread(str(out / name)) is not None
    assert finished_runs(tmp_path) == [] and comparison_tables([])[1].count("\n") == 2


def test_image_grid_title_clears_two_line_captions(tmp_path, monkeypatch):
    """misclassified.png's captions take two lines: the title above them must not cover any."""
    overlaps = []

    def check_then_save(fig, path, dpi=120):
        fig.draw_without_rendering()  # runs the layout
        (title,) = [t.get_window_extent() for t in fig.texts]  # the suptitle
        overlaps.extend(ax.title.get_text() for ax in fig.axes if title.overlaps(ax.title.get_window_extent()))
        real_save(fig, path, dpi)

    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", check_then_save)
    tiles = [np.full((32, 32, 3), 40 * k, np.uint8) for k in range(7)]
    captions = [f"true cat\npred dog (0.9{k})" for k in range(7)]
    plots.plot_image_grid(tiles, captions, tmp_path / "grid.png", "scratch_cnn/full: 7 of 40 misclassified")
    assert overlaps == [] and cv2.imread(str(tmp_path / "grid.png")) is not None


@pytest.mark.parametrize("content, message", [
    (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46", "cannot be read"),
    (None, "not a checkpoint of this project"),
])
def test_bad_checkpoints_are_refused(tmp_path, content, message, capsys):
    path = tmp_path / "model.pt"
    if content is None:
        import torch
        torch.save({"state_dict": {}}, path)
    else:
        path.write_bytes(content)
    one_error_line(evaluate, ["--ckpt", path, "--out-dir", tmp_path / "e"], capsys, message)
    assert not (tmp_path / "e").exists()


def test_truncated_real_checkpoint(trained, tmp_path):
    _, out = trained
    cut = tmp_path / "cut.pt"
    blob = (out / "best.pt").read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    shutil.rmtree(tmp_path)


def test_checkpoint_whose_weights_do_not_fit_is_one_error_line(trained, tmp_path, capsys):
    _, out = trained
    import torch
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    ckpt["model_state"]["classifier.2.weight"] = torch.zeros(3, 7)
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, edited)
    one_error_line(evaluate, ["--ckpt", edited, "--out-dir", tmp_path / "e"], capsys, "do not fit")
    assert not (tmp_path / "e").exists()


def fake_run(runs: Path, name: str, seed: int, val: float, test: float, **config) -> None:
    """A finished run folder as fit() leaves it: metrics.json and config.json (no training)."""
    folder = runs / name
    folder.mkdir(parents=True)
    metrics = {"arch": "mobilenet_v2", "mode": "fc", "lr": config.get("lr", 1e-3), "batch_size": 32, "epochs_run": 15,
               "best_val_acc": val, "test_acc": test, "test_macro_f1": test - 0.01, "train_seconds": 10.0 + seed,
               "history": [{"epoch": 1, "val_acc": val}]}
    cfg = {"arch": "mobilenet_v2", "mode": "fc", "lr": 1e-3, "epochs": 15, "seed": seed, "tag": name,
           "resume": None, "output_dir": str(runs), "data_dir": f"/data/{seed}", "workers": seed + 1,
           "host": f"host{seed}", "split_fingerprint": "abc", **config}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.json").write_text(json.dumps(cfg))


def test_compare_groups_runs_that_differ_only_by_seed(tmp_path):
    runs = tmp_path / "runs"
    vals, tests = [0.98, 0.97, 0.975], [0.965, 0.955, 0.962]
    for seed, (val, test) in enumerate(zip(vals, tests)):
        fake_run(runs, f"r-fc-s{seed}", seed, val, test)
    fake_run(runs, "r-fc-lr3e-3", 0, 0.99, 0.97, lr=3e-3)  # another lr: a configuration of its own
    fake_run(runs, "r-fc-mixup", 1, 0.96, 0.95, mixup=0.2)  # an extra argument: also its own
    rows = evaluate.compare(runs)
    assert len(rows) == 5 and len((runs / "compare.csv").read_text().strip().splitlines()) == 6  # still one per run
    seeds_csv = list(csv.DictReader(io.StringIO((runs / "compare_seeds.csv").read_text())))
    assert len(seeds_csv) == 1
    row = seeds_csv[0]
    assert row["runs"] == "r-fc-s0 r-fc-s1 r-fc-s2" and row["n"] == "3" and row["seeds"] == "0 1 2"
    assert float(row["test acc mean"]) == pytest.approx(statistics.mean(tests))
    assert float(row["test acc std"]) == pytest.approx(statistics.stdev(tests))
    assert float(row["best val acc std"]) == pytest.approx(statistics.stdev(vals))
    md = (runs / "compare.md").read_text()
    assert f"{statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f}" in md
    assert "differ only by seed" in md and "r-fc-lr3e-3" not in md.split("differ only by seed")[1]


def test_compare_without_configs_or_repeats_has_no_seed_table(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "a", 0, 0.9, 0.9)
    fake_run(runs, "b", 1, 0.8, 0.8)
    (runs / "b" / "config.json").unlink()  # an old run folder: never grouped, still compared
    evaluate.compare(runs)
    assert not (runs / "compare_seeds.csv").exists() and "seed" not in (runs / "compare.md").read_text()


def test_compare_lists_the_registrys_runs_and_skips_unreadable_metrics(tmp_path):
    runs = tmp_path / "runs"
    for k, name in enumerate(("a", "b", "c", "d")):
        fake_run(runs, name, k, 0.9 - k / 10, 0.9 - k / 10)
    (runs / "b" / "metrics.json").write_text("[0.8, 0.8]")  # JSON, but not a run's metrics
    (runs / "c" / "metrics.json").write_text('{"best_val_acc": 0.')  # cut short
    (runs / "d" / "config.json").unlink()  # an old run folder: listed, never matched
    rows = evaluate.compare(runs)
    assert [r["run"] for r in rows] == ["a", "d"]
    assert [(r["run_dir"].name, r["config"] is None) for r in finished_runs(runs)] == [("a", False), ("d", True)]
    # The global best's candidates are the registry's runs with a best.pt and a config on the split.
    assert runs_on_split(runs, "abc", None) == []
    for name in ("a", "d"):
        (runs / name / "best.pt").write_bytes(b"")
    assert [r["run_dir"].name for r in runs_on_split(runs, "abc", None)] == ["a"]


def test_ensemble_scores_the_mean_probabilities_against_each_member(trained, tmp_path):
    from common.inference import Predictor, load_test_split

    data, out = trained
    paths = sorted(out.glob("*/best.pt"))
    assert len(paths) == 2
    (data.parent / "sources.csv").write_text("file,class,source\n" + "".join(
        f"{c.name}/{f.name},{c.name},{'Animals-10' if i % 2 else 'other'}\n"
        for c in sorted(data.iterdir()) for i, f in enumerate(sorted(c.iterdir()))))
    try:
        result = evaluate.evaluate_ensemble(evaluate.get_args_parser().parse_args(
            ["--ensemble", *map(str, paths), "--device", "cpu", "--out-dir", str(tmp_path)]))
    finally:
        (data.parent / "sources.csv").unlink()
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert saved == json.loads(json.dumps(result)) and saved["n"] == 40
    ckpts = [load_checkpoint(p) for p in paths]
    test = load_test_split(ckpts[0])
    probs = [Predictor(c, torch.device("cpu")).predict(test.images, test.labels, test.indices)[0].softmax(1).numpy()
             for c in ckpts]
    y = test.labels[test.indices]
    assert saved["ensemble"]["accuracy"] == pytest.approx(np.mean(np.mean(probs, 0).argmax(1) == y))
    for member, p in zip(saved["members"], probs):
        assert member["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y)) == pytest.approx(
            json.loads((Path(member["checkpoint"]).parent / "metrics.json").read_text())["test_acc"])
    assert sum(v["n"] for v in saved["ensemble"]["by_source"].values()) == 40 and saved["ensemble"]["source_gap"]


def test_an_ensemble_of_one_model_is_one_error_line(trained, tmp_path, capsys):
    _, out = trained
    one_error_line(evaluate, ["--ensemble", out / "best.pt", "--out-dir", tmp_path / "e"], capsys, "two or more")
    assert not (tmp_path / "e").exists()
