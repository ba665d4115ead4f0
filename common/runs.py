"""Run folders, the checkpoint schema, crash-safe per-epoch checkpoints, and the global runs/best.pt.

Each epoch commits its files as one (`CheckpointSaver`): a better epoch is first written as `best.pt.next`,
then `last.pt` (the commit point), then `best.pt.next` replaces `best.pt`. After a kill at any moment,
`recover` finishes or rolls back the pending best so that `best.pt` is always the best epoch `last.pt` records.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from common.cli import UserError
from common.compression import quiet_quantization
from common.files import atomic_write, atomic_write_text, file_lock, file_sha256, remove_stale_temp_files

CKPT_FORMAT = "animals10-ckpt/1"
# What every script needs to rebuild and run a model from the file alone, and what --resume needs besides.
MODEL_KEYS = ("arch", "mode", "classes", "model_state", "img_size", "crop_size", "mean", "std")
RESUME_KEYS = ("split_fingerprint", "epoch", "best_epoch", "best_val_acc", "optimizer_state", "scheduler_state", "rng",
               "history", "config")
TRAINING_STATE = ("optimizer_state", "scheduler_state", "scaler_state", "rng", "callbacks", "prelude")  # --resume


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, not ours, or for other classes; the message says which."""


def run_dir_name(model: str, mode: str, tag: str | None = None) -> str:
    """<timestamp>-<model>-<mode>[-tag]."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{mode}" + (f"-{tag}" if tag else "")


def make_run_dir(output_dir: Path, name: str) -> Path:
    """Create output_dir/name, adding a counter if the name is taken."""
    for i in range(100):
        path = output_dir / (name if i == 0 else f"{name}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder named {name} in {output_dir}")


def write_json(path: Path, obj) -> None:
    """Atomically write pretty, strict JSON (inf or NaN raise ValueError: no JSON reader takes them)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n")


def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save atomically: a kill never leaves a half-written checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path | str, map_location="cpu", keys: tuple[str, ...] = MODEL_KEYS) -> dict:
    """Load one of our checkpoints with weights_only=True, or raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run's best.pt or runs/best.pt")
    try:
        with quiet_quantization():  # an int8 checkpoint's quantized tensors are rebuilt through deprecated storages
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}); it is truncated, not a "
                              "PyTorch file, or holds objects other than tensors: use another run's best.pt "
                              "or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no '{CKPT_FORMAT}' marker); "
                              "pass a best.pt written by part1_scratch_cnn.py or the part2 scripts")
    require_keys(ckpt, keys, path)
    if "model_state" in keys:
        require_finite(ckpt["model_state"], path)
    return ckpt


def require_finite(state: dict, path: Path | str) -> None:
    """Raise CheckpointError when a weight of the state dict is inf or NaN (a diverged run's model scores nothing)."""
    bad = [k for k, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()
           and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): its "
                              "training diverged; retrain with a lower --lr and use that run's best.pt")


def slim_checkpoint(ckpt: dict) -> dict:
    """A checkpoint to use, not to resume: everything but the training state (optimizer, schedule, RNG)."""
    return {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}


def require_keys(ckpt: dict, keys: tuple[str, ...], path: Path | str) -> None:
    """Raise CheckpointError naming the keys of the schema that the checkpoint lacks."""
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it was edited or written by another "
                              "version: use another run's best.pt or retrain")


# Options that may differ when a run is resumed: where things are and how fast, not what is trained.
RESUME_MAY_DIFFER = {"resume", "device", "amp", "workers", "data_dir", "output_dir", "split_file", "tag",
                     "monitor_test"}


class CheckpointSaver:
    """A run's folder and its checkpoint policy: what last.pt and best.pt hold, the best epoch, resuming, the end.

    Each epoch's files are committed so that a kill never leaves them inconsistent; the folder and its config.json
    are created by the first commit, so a start that fails leaves nothing. With write=False (the other processes
    under torchrun) it keeps the same record of epochs and best, and writes nothing.
    """

    def __init__(self, run_dir: Path, config: dict, describe: dict | None = None, exists: bool = False,
                 write: bool = True):
        """run_dir: the folder to create at the first commit (or a free name like it); with exists, a resumed run.

        describe: what every checkpoint carries to rebuild the model (arch, mode, classes, split_fingerprint, ...).
        """
        self.run_dir, self.config, self._created, self.write = run_dir, config, exists, write
        self._made_here = False  # whether this saver created the folder (a resumed run's is not its to remove)
        self.describe = describe or {}
        self.best_acc, self.best_epoch, self.start_epoch = -1.0, -1, 0
        self.history: list[dict] = []

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def _pending(self) -> Path:
        return self.run_dir / "best.pt.next"

    def resume(self, path: Path | str, options: dict) -> dict:
        """Continue the killed run whose last.pt is path, after checking it is this run; returns that checkpoint.

        options are this start's option values (as config.json records them), compared with the run's own.
        """
        self.run_dir = check_resume_path(Path(path), self.run_dir.parent)
        ckpt = load_checkpoint(path, keys=("arch", "mode"))
        _check_resumable(ckpt, path, self.describe, options)
        self.config, self._created = ckpt["config"], True
        self.best_acc, self.best_epoch = ckpt["best_val_acc"], ckpt["best_epoch"]
        self.history, self.start_epoch = ckpt["history"], ckpt["epoch"] + 1
        if self.write:
            self.recover(ckpt)
        return ckpt

    def checkpoint(self, epoch: int, state: dict) -> dict:
        """What last.pt and best.pt hold: the model's description, the run's record, and the training state."""
        return {"format": CKPT_FORMAT, **self.describe, "epoch": epoch, "best_val_acc": self.best_acc,
                "best_epoch": self.best_epoch, "history": self.history, "config": self.config, **state}

    def save(self, epoch: int, row: dict, state: dict) -> bool:
        """Record an epoch (its history row; the best by row["val_acc"]) and commit its files; True if it is best."""
        improved = math.isfinite(row["val_acc"]) and row["val_acc"] > self.best_acc
        if improved:
            self.best_acc, self.best_epoch = row["val_acc"], epoch
        self.history.append(row)
        if self.write:
            self.commit(self.checkpoint(epoch, state), improved)
        return improved

    def ensure_dir(self) -> None:
        """Create the run folder (a free name like the one asked for) with its config.json, once."""
        if not self._created:
            # A run started in the same second by another process or a sweep may hold the name: never share it.
            self.run_dir = make_run_dir(self.run_dir.parent, self.run_dir.name)
            self._made_here = True
            write_json(self.run_dir / "config.json", self.config)
            self._created = True

    def discard(self, log=print) -> None:
        """Remove the run folder this saver created, with all it wrote (a run that failed and must not resume)."""
        if self.write and self._made_here and self.run_dir.is_dir():
            shutil.rmtree(self.run_dir)
            log(f"removed the run folder {self.run_dir}: the run cannot continue")

    def commit(self, ckpt: dict, improved: bool) -> None:
        """Write one epoch: the pending best (if improved), then last.pt, then the best into place."""
        self.ensure_dir()
        if improved:
            save_checkpoint(ckpt, self._pending)
        save_checkpoint(ckpt, self.last)
        if improved:
            os.replace(self._pending, self.best)

    def recover(self, last: dict) -> None:
        """After a kill: keep the pending best if last.pt committed its epoch, else drop it; then check best.pt."""
        remove_stale_temp_files(self.run_dir)
        if self._pending.exists():
            pending = load_checkpoint(self._pending, keys=("epoch",))
            if pending["epoch"] == last["best_epoch"]:
                os.replace(self._pending, self.best)
            else:
                self._pending.unlink()
        best = load_checkpoint(self.best, keys=("epoch",)) if self.best.exists() else None
        if last["best_epoch"] >= 0 and (best is None or best["epoch"] != last["best_epoch"]):
            found = "is missing" if best is None else f"holds epoch {best['epoch'] + 1}"
            raise CheckpointError(f"{self.best} {found}, but {self.last} records epoch {last['best_epoch'] + 1} as "
                                  "the best; the run folder was changed by hand: start a new run")

    def finish(self, metrics: dict, log=print) -> None:
        """Mark the run finished with its metrics.json, then let it compete for the global best."""
        write_json(self.run_dir / "metrics.json", metrics)
        self.update_global_best(log)

    def update_global_best(self, log=print) -> None:
        """Make the runs folder's best.pt the best finished run on this run's split and classes (see below)."""
        update_global_best(self.run_dir.parent, self.describe["split_fingerprint"], self.describe["classes"], log)


def _check_resumable(ckpt: dict, path: Path | str, describe: dict, options: dict) -> None:
    """Raise CheckpointError unless the checkpoint is a resumable run of this model, split and options."""
    if (ckpt["arch"], ckpt["mode"]) != (describe["arch"], describe["mode"]):
        raise CheckpointError(f"--resume {path} is a {ckpt['arch']}/{ckpt['mode']} run, "
                              f"not {describe['arch']}/{describe['mode']}; resume it with its own script and --mode")
    require_keys(ckpt, MODEL_KEYS + RESUME_KEYS, path)
    if ckpt["split_fingerprint"] != describe["split_fingerprint"]:
        raise CheckpointError(f"--resume {path} was trained on another split; "
                              "resume with its --output-dir/--split-file")
    saved = ckpt["config"]
    # An option the saved config lacks was added since the run started; its default is what the run used.
    changed = [k for k, v in options.items() if k in saved and k not in RESUME_MAY_DIFFER and saved[k] != v]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)} (now {options[k]})" for k in changed)
        raise CheckpointError(f"--resume {path}: the run was started with {flags}; resume it with the "
                              "options in its config.json, or start a new run")


def check_resume_path(path: Path, output_dir: Path) -> Path:
    """The run folder of --resume PATH: only a run's own last.pt, inside --output-dir, of an unfinished run."""
    run_dir = path.parent
    if path.name != "last.pt" or not (run_dir / "config.json").is_file():
        raise CheckpointError(f"--resume {path} is not a run's last.pt; pass runs/<run>/last.pt (best.pt and "
                              "runs/best.pt hold no training state to continue)")
    if run_dir.parent.resolve() != output_dir.resolve():
        raise CheckpointError(f"--resume {path} is a run of {run_dir.parent}, not of --output-dir {output_dir}; "
                              f"pass --output-dir {run_dir.parent}")
    if (run_dir / "metrics.json").is_file():
        raise CheckpointError(f"{run_dir} is finished (it has metrics.json); to train longer, start a new run "
                              "with a larger --epochs")
    return run_dir


def finished_runs(output_dir: Path) -> list[dict]:
    """The registry: every finished run folder (one with a readable metrics.json) under output_dir, by name.

    Each is {"run_dir", "config", "metrics"}; config is None when config.json is missing or unreadable (a folder
    from an older version): such a run is listed, but never matched to a split or a configuration.
    """
    runs = []
    for metrics_path in sorted(output_dir.glob("*/metrics.json")):
        run_dir = metrics_path.parent
        config, metrics = _read_json(run_dir / "config.json"), _read_json(metrics_path)
        if isinstance(metrics, dict):
            runs.append({"run_dir": run_dir, "config": config if isinstance(config, dict) else None,
                         "metrics": metrics})
    return runs


def current_split(output_dir: Path, fingerprint: str, classes: list[str]) -> tuple[str, list[str]]:
    """The split runs/best.pt is chosen on: output_dir's split.json when there is one, else the given run's."""
    meta = _read_json(output_dir / "split.json")
    if isinstance(meta, dict) and "fingerprint" in meta and "classes" in meta:
        return meta["fingerprint"], meta["classes"]
    return fingerprint, classes


def runs_on_split(output_dir: Path, fingerprint: str, classes: list[str]) -> list[dict]:
    """Finished runs on the current split (see current_split) and these classes, best validation accuracy first."""
    fingerprint, classes = current_split(output_dir, fingerprint, classes)
    runs = [r for r in finished_runs(output_dir)
            if r["config"] is not None and _is_finite(r["metrics"].get("best_val_acc"))
            and (r["run_dir"] / "best.pt").is_file()
            and r["config"].get("split_fingerprint") == fingerprint and r["config"].get("classes") == classes]
    return sorted(runs, key=lambda r: -r["metrics"]["best_val_acc"])  # a stable sort keeps the earliest of equals


def update_global_best(output_dir: Path, fingerprint: str, classes: list[str], log=print) -> None:
    """Make <output_dir>/best.pt the best finished run (by val accuracy) on the current split and classes.

    Chosen afresh from the run folders under a file lock, so concurrent runs, kills between the two writes,
    and runs on other splits or classes can never leave a wrong or inconsistent global best.
    """
    with file_lock(output_dir / ".best.lock"):
        fingerprint, classes = current_split(output_dir, fingerprint, classes)
        candidates = runs_on_split(output_dir, fingerprint, classes)
        if not candidates:
            return
        best = candidates[0]
        source = best["run_dir"] / "best.pt"
        record = {"val_acc": best["metrics"]["best_val_acc"], "run_dir": str(best["run_dir"]),
                  "checkpoint": str(source), "sha256": file_sha256(source), "split_fingerprint": fingerprint,
                  "classes": classes}
        target = output_dir / "best.pt"
        unchanged = _read_json(output_dir / "best.json") == record
        if unchanged and target.is_file() and file_sha256(target) == record["sha256"]:
            return
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))  # bytes as they are
        write_json(output_dir / "best.json", record)
        log(f"{target} now holds {best['run_dir'].name} (val acc {record['val_acc']:.4f})")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_finite(x) -> bool:
    """A real number, not inf or NaN (an older version could record NaN accuracies of a diverged run)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
