"""Run folders, atomic checkpoints and reports, the global runs/best.pt, and checkpoint loading."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from common.data import atomic_write, atomic_write_text

CKPT_FORMAT = "animals10-ckpt/1"


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, not ours, or for other classes; the message says which."""


def make_run_dir(output_dir: Path, model: str, mode: str, tag: str | None = None) -> Path:
    """Create runs/<timestamp>-<model>-<mode>[-tag]/, adding a counter if the name is taken."""
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{mode}" + (f"-{tag}" if tag else "")
    for i in range(100):
        path = output_dir / (name if i == 0 else f"{name}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder named {name} in {output_dir}")


def write_json(path: Path, obj) -> None:
    """Atomically write pretty JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save atomically: a kill never leaves a half-written checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path | str, map_location="cpu") -> dict:
    """Load one of our checkpoints with weights_only=True, or raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run's best.pt or runs/best.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}); it is truncated or not a "
                              "PyTorch file: use another run's best.pt or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no '{CKPT_FORMAT}' marker); "
                              "pass a best.pt written by part1_scratch_cnn.py or the part2 scripts")
    return ckpt


def update_global_best(output_dir: Path, ckpt_path: Path, val_acc: float, run_dir: Path, log=print) -> bool:
    """Copy ckpt_path to <output_dir>/best.pt when val_acc beats the best recorded so far."""
    record_path = output_dir / "best.json"
    best = None
    if record_path.exists():
        try:
            best = json.loads(record_path.read_text())
        except ValueError:
            best = None
    if best is not None and best.get("val_acc", -1) >= val_acc and Path(best.get("run_dir", "")).exists():
        return False
    atomic_write(output_dir / "best.pt", lambda tmp: shutil.copyfile(ckpt_path, tmp))  # bytes as they are
    write_json(record_path, {"val_acc": val_acc, "run_dir": str(run_dir), "checkpoint": str(ckpt_path)})
    log(f"{output_dir / 'best.pt'} now holds {run_dir.name} (val acc {val_acc:.4f})")
    return True
