"""Synthetic class-folder datasets made by the tests themselves."""
from __future__ import annotations

import os
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: each worker's torch, OpenMP and BLAS keep to one thread (their subprocesses inherit it),
    # or the workers' thread pools oversubscribe the cores and the suite runs slower on two workers than on one.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANIMALS = ["cane", "cavallo", "elefante", "farfalla", "gallina", "gatto", "mucca", "pecora", "ragno", "scoiattolo"]


def class_image(k: int, n_classes: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A noisy BGR image whose hue and stripe direction identify class k: easy to learn, not trivial."""
    hue = int(180 * k / n_classes)
    hsv = np.full((size, size, 3), (hue, 200, 200), np.uint8)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.int16)
    if k % 2:
        img[:, ::6] //= 2
    else:
        img[::6] //= 2
    img += rng.integers(-25, 26, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, classes=ANIMALS, per_class: int = 20, size: int = 48, seed: int = 0) -> Path:
    """Write per_class images per class folder (alternating .jpg and .png) and return the folder."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = ".png" if i % 4 == 3 else ".jpg"
            cv2.imwrite(str(root / cls / f"img{i:03d}{ext}"), class_image(k, len(classes), rng, size))
    return root


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped when torch.cuda.is_available() is false")


def pytest_collection_modifyitems(config, items) -> None:
    """Skip the tests marked cuda on a machine without CUDA (bench/gpu_check.sh runs them on a GPU)."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch  # only when a cuda test was collected

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is false")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "raw-img")


def tiny_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """Command-line arguments for a fast run on a make_dataset folder."""
    return ["--data-dir", str(data_dir), "--output-dir", str(out), "--per-class", "20", "--split", "12,4,4",
            "--img-size", "72", "--crop-size", "64", "--workers", "2", *extra]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even `except Exception` handlers)."""


def kill_after(monkeypatch, name: str, epoch: int) -> None:
    """Die right after the checkpoint file `name` of 0-based `epoch` is written (before anything else)."""
    from common import runs  # after conftest put the project on sys.path
    real_save = runs.save_checkpoint

    def save_then_die(obj, path):
        real_save(obj, path)
        if path.name == name and obj["epoch"] == epoch:
            raise Killed

    monkeypatch.setattr(runs, "save_checkpoint", save_then_die)


def read_board(run_dir: Path) -> dict:
    """A run folder's TensorBoard events, read back with TensorBoard's own reader: scalars, images, hparams."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return {"scalars": {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags["scalars"]},
            "images": {t: [(e.step, e.width, e.height) for e in events.Images(t)] for t in tags["images"]},
            "hparams": hparams}


def refusal(script, argv: list[str], capsys) -> str:
    """What a script prints when it refuses argv: the stderr of its exit, in this process (no interpreter start)."""
    from common.cli import run_main
    with pytest.raises(SystemExit) as e:
        run_main(script.main, script.get_args_parser().parse_args(argv))
    assert e.value.code not in (0, None)
    return capsys.readouterr().err + (e.value.code if isinstance(e.value.code, str) else "")


def one_error_line(script, argv: list, capsys, *words: str) -> str:
    """A refusal that is exactly one `error: ...` line (no traceback, no usage text) naming every word."""
    lines = refusal(script, [str(a) for a in argv], capsys).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]
