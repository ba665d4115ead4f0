"""`study.py --handin DIR`: exactly what is handed in, and one zip of it.

    DIR/report.ipynb                          the executed notebook (runs/report/report.ipynb)
    DIR/saved_models/<model>/best.pt          each final model: the best scratch CNN, ResNet-18 and MobileNetV2
                                              by validation accuracy, without its training state
    DIR/saved_models/<model>/events.out.*     its TensorBoard events
    DIR/handin.zip                            all of the above

    DIR/.handin.json                          the marker: every file above, as this project wrote them

No data and no caches. The folder is built beside DIR and moved into place, so DIR is never half-written. An
earlier hand-in in DIR is recognised by its marker and replaced only when DIR holds nothing but the files the marker
lists; any other non-empty folder is refused, and so is a folder that is, or holds, the study's own folders.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

from common.cli import UserError
from common.runs import load_checkpoint, save_checkpoint, slim_checkpoint, write_json

FINAL_MODELS = ("scratch_cnn", "resnet18", "mobilenet_v2")  # the architectures the course asks a final model of
ZIP_NAME = "handin.zip"
MARKER, MARKER_FORMAT = ".handin.json", "animals10-handin/1"


def final_runs(runs: list[dict]) -> dict[str, dict]:
    """The finished run with the best validation accuracy of each final architecture that has one."""
    best: dict[str, dict] = {}
    for r in runs:
        arch = (r.get("metrics") or {}).get("arch")
        if r.get("status") == "done" and arch in FINAL_MODELS:
            if arch not in best or r["metrics"]["best_val_acc"] > best[arch]["metrics"]["best_val_acc"]:
                best[arch] = r
    return {arch: best[arch] for arch in FINAL_MODELS if arch in best}


def check_handin_folder(folder: Path, protected: Mapping[str, Path]) -> None:
    """Refuse, before a long study starts too, a folder that is or holds one of the `protected` folders (what ->
    path: the output folder, the data, the project, the current folder), or that holds anything but an earlier
    hand-in: the hand-in replaces its folder whole."""
    folder = Path(folder)
    where = folder.resolve()
    for what, path in protected.items():
        path = Path(path).resolve()
        if where == path or where in path.parents:
            relation = "is" if where == path else "holds"
            raise UserError(f"--handin {folder} {relation} the {what} ({path}); the hand-in replaces its folder "
                            "whole: pass a new folder of its own, e.g. --handin handin")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"--handin {folder} is a file; pass a new or empty folder")
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
    if not found:
        return
    ours = _written_files(folder)
    if ours is None:
        raise UserError(f"--handin {folder} is not empty and holds no earlier hand-in (no {MARKER} written by "
                        "study.py); pass a new or empty folder")
    others = sorted(found - ours - _parents(ours) - {MARKER})
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UserError(f"--handin {folder} holds {shown} besides the earlier hand-in; move them out or pass "
                        "another folder")


def _written_files(folder: Path) -> set[str] | None:
    """The files an earlier hand-in's marker says this project wrote there; None without a valid marker."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = marker.get("files") if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def _parents(files: set[str]) -> set[str]:
    """The folders (relative, as posix paths) that hold the given files."""
    return {parent.as_posix() for f in files for parent in Path(f).parents if parent != Path(".")}


def write_handin(runs: list[dict], notebook: Path | None, folder: Path, protected: Mapping[str, Path],
                 log=print) -> Path:
    """Write the hand-in folder from the study's run records and this study's executed notebook; returns the zip."""
    folder = Path(folder)
    check_handin_folder(folder, protected)
    if notebook is None or not notebook.is_file():
        raise UserError("the notebook was not written, so there is nothing to hand in; see the notebook line above")
    chosen = final_runs(runs)
    if not chosen:
        raise UserError("no finished scratch CNN, ResNet-18 or MobileNetV2 run to hand in; train one first")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        build = Path(tmp) / "handin"
        build.mkdir()
        shutil.copy2(notebook, build / "report.ipynb")
        for arch, r in chosen.items():
            _save_model(Path(r["run_dir"]), build / "saved_models" / arch)
            log(f"hand-in: saved_models/{arch} <- {Path(r['run_dir']).name} "
                f"(val acc {r['metrics']['best_val_acc']:.4f})")
        _zip(build, build / ZIP_NAME)
        files = sorted(p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file())
        write_json(build / MARKER, {"format": MARKER_FORMAT, "files": files})
        old = Path(tmp) / "old"
        if folder.exists():
            folder.rename(old)  # removed with the temporary folder, once the new one is in place
        build.rename(folder)
    return folder / ZIP_NAME


def _save_model(run_dir: Path, out: Path) -> None:
    """A run's best.pt without its training state, and its TensorBoard events."""
    out.mkdir(parents=True)
    ckpt = load_checkpoint(run_dir / "best.pt")
    save_checkpoint(slim_checkpoint(ckpt), out / "best.pt")
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        shutil.copy2(events, out / events.name)


def _zip(root: Path, path: Path) -> None:
    """Every file under root, by its path relative to root."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p != path):
            z.write(f, f.relative_to(root).as_posix())
