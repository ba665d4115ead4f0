"""Accuracy by image source: sources.csv inside or beside the data folder, the breakdown of every evaluation (the
run's own final test and evaluate.py), the gap with its standard error, and the report's section."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import evaluate
import part1_scratch_cnn as part1
from common.cli import DataError
from common.report import build_report
from common.sources import REFERENCE, UNLISTED, by_source, read_sources, source_gap
from conftest import make_dataset, tiny_args


def write_sources(data: Path, where: Path, every: int = 3) -> dict[str, str]:
    """sources.csv for a make_dataset folder: every `every`-th image of a class is an Animals-10 photo."""
    table = {f"{c.name}/{f.name}": REFERENCE if i % every == 0 else "other"
             for c in sorted(data.iterdir()) for i, f in enumerate(sorted(c.iterdir()))}
    with open(where / "sources.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class", "source"])
        w.writerows([name, name.split("/")[0], src] for name, src in table.items())
    return table


def test_sources_csv_is_read_inside_or_beside_the_data_folder(tmp_path):
    data = make_dataset(tmp_path / "raw-img", classes=["cane", "gatto"], per_class=3)
    assert read_sources(data) is None  # none: no breakdown
    table = write_sources(data, tmp_path)
    assert read_sources(data) == table
    (tmp_path / "sources.csv").rename(data / "sources.csv")
    assert read_sources(data) == table
    (data / "sources.csv").write_text("path,origin\ncane/img000.jpg,x\n")
    with pytest.raises(DataError, match="no 'file' and 'source' columns"):
        read_sources(data)


def test_breakdown_and_gap_by_hand():
    sources = [REFERENCE] * 4 + ["horses"] * 6 + [UNLISTED]
    correct = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0], bool)
    table = by_source(sources, correct)
    assert list(table) == ["horses", REFERENCE, UNLISTED]  # the largest source first
    assert table[REFERENCE] == {"n": 4, "correct": 3, "accuracy": 0.75}
    gap = source_gap(table)
    p1, p2 = 0.75, 6 / 7
    assert gap["gap"] == pytest.approx(p1 - p2) and gap["other_n"] == 7
    assert gap["se"] == pytest.approx(math.sqrt(p1 * (1 - p1) / 4 + p2 * (1 - p2) / 7))
    assert source_gap(by_source(["horses"] * 3, np.ones(3, bool))) is None  # no reference images: no gap


@pytest.fixture(scope="module")
def run_with_sources(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("sources")
    data = make_dataset(root / "raw-img")
    table = write_sources(data, root)
    out = root / "runs"
    part1.main(part1.get_args_parser().parse_args(tiny_args(data, out, "--epochs", "1", "--batch-size", "16")))
    return data, out, table


def test_every_evaluation_breaks_accuracy_down_by_source(run_with_sources, tmp_path):
    data, out, table = run_with_sources
    run = next(p for p in out.iterdir() if (p / "metrics.json").is_file())
    metrics = json.loads((run / "metrics.json").read_text())
    own = metrics["test_by_source"]
    assert sum(v["n"] for v in own.values()) == 40 and set(own) == {REFERENCE, "other"}
    assert sum(v["correct"] for v in own.values()) == round(40 * metrics["test_acc"])
    result = evaluate.evaluate_checkpoint(evaluate.get_args_parser().parse_args(
        ["--ckpt", str(run / "best.pt"), "--device", "cpu", "--out-dir", str(tmp_path)]))
    assert result["by_source"] == own and result["source_gap"] == metrics["test_source_gap"]
    split = json.loads((out / "split.json").read_text())
    test_names = [e["path"] for e in split["files"] if e["subset"] == "test"]
    assert own[REFERENCE]["n"] == sum(table[n] == REFERENCE for n in test_names)
    folder = evaluate.evaluate_checkpoint(evaluate.get_args_parser().parse_args(
        ["--ckpt", str(run / "best.pt"), "--device", "cpu", "--data-dir", str(data), "--out-dir", str(tmp_path / "f")]))
    assert folder["by_source"][REFERENCE]["n"] == sum(v == REFERENCE for v in table.values())  # any folder too


def test_report_states_the_gap_with_its_standard_error(run_with_sources, tmp_path):
    _, out, _ = run_with_sources
    run = next(p for p in out.iterdir() if (p / "metrics.json").is_file())
    metrics = json.loads((run / "metrics.json").read_text())
    study = {"plan": "t", "runs": [{"name": "s", "label": "scratch", "status": "done", "vars": {},
                                    "metrics": metrics, "config": {}, "run_dir": str(run), "files": {}}]}
    page = build_report(study, tmp_path).with_name("report.md").read_text()
    g = metrics["test_source_gap"]
    assert "## Accuracy by image source" in page
    assert f"{g['gap'] * 100:+.1f} ± {g['se'] * 100:.1f} pp" in page
    assert f"**Image sources** (best from scratch, scratch): {REFERENCE} photos {g['reference_acc']:.4f}" in page
