"""The README's usage commands as written, in a fresh folder, on an assignment-sized synthetic dataset.

Ten classes of 450 images with planted near duplicates (the shape of the data the assignment hands out), in the
default data folder, with only flags that keep the run short (--epochs, --img-size, --crop-size, --weights none).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import ANIMALS, ROOT, make_dataset

SHORT = ["--epochs", "1", "--img-size", "72", "--crop-size", "64"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A fresh working folder with data/animals10/raw-img (450 a class, near duplicates planted) and cnn_test/."""
    root = tmp_path_factory.mktemp("fresh")
    data = make_dataset(root / "data" / "animals10" / "raw-img", per_class=450, size=40)
    for cls in ANIMALS[:3]:  # a re-encoded copy of an image: a near duplicate within its class
        img = cv2.imread(str(data / cls / "img000.jpg"))
        cv2.imwrite(str(data / cls / "img000_copy.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 70])
        (data / cls / "img001.jpg").unlink()  # keep 450 in the class
    test_dir = root / "data" / "animals10" / "cnn_test"
    test_dir.mkdir()
    for i, cls in enumerate(ANIMALS * 2):
        source = sorted((data / cls).glob("*.jpg"))[10 + i]
        (test_dir / f"{i + 1}.jpg").write_bytes(source.read_bytes())
    return root


def run(cwd: Path, script: str, *argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{script} {' '.join(argv)} failed:\n{proc.stderr[-3000:]}"
    return proc


def test_readme_commands_work_as_written(fresh):
    runs = fresh / "runs"
    run(fresh, "part1_scratch_cnn.py", *SHORT)
    split = json.loads((runs / "split.json").read_text())
    assert split["class_sizes"] == {c: [300, 75, 75] for c in ANIMALS}  # no flag needed for 450 a class
    run(fresh, "part2_resnet18.py", "--mode", "full", "--lr", "1e-4", "--weights", "none", *SHORT)
    run(fresh, "part2_mobilenet.py", "--mode", "fc", "--weights", "none", *SHORT)
    folders = [p for p in runs.iterdir() if (p / "metrics.json").is_file()]
    assert sorted(p.name.split("-", 2)[2] for p in folders) == ["mobilenet_v2-fc", "resnet18-full", "scratch_cnn-full"]
    for folder in folders:
        assert {"config.json", "last.pt", "best.pt", "metrics.json"} <= {p.name for p in folder.iterdir()}
        assert list(folder.glob("events.out.tfevents.*"))
    assert (runs / "best.pt").is_file() and (runs / "best.json").is_file()

    run(fresh, "evaluate.py", "--ckpt", "runs/best.pt")
    result = json.loads((runs / "eval.json").read_text())
    assert result["n"] == 750 and 0 <= result["accuracy"] <= 1
    assert (runs / "confusion_matrix.png").is_file()
    run(fresh, "gradcam.py", "--ckpt", "runs/best.pt")
    assert (runs / "gradcam" / "gradcam_grid.png").is_file() and (runs / "gradcam" / "error_analysis.md").is_file()
    run(fresh, "submit.py", "--no-upload")
    csvs = sorted((fresh / "submissions").glob("*.csv"))
    assert len(csvs) == 3  # the three best runs
    for csv in csvs:
        lines = csv.read_text().strip().splitlines()
        assert lines[0] == "ID,Label" and len(lines) == 21
        assert all(line.split(",")[1] in ANIMALS for line in lines[1:])
