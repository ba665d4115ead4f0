"""`study.py --handin DIR`: exactly what is handed in, and one zip of it.

    DIR/report.ipynb                          the executed notebook (runs/report/report.ipynb)
    DIR/saved_models/<model>/best.pt          each final model: the best scratch CNN, ResNet-18 and MobileNetV2
                                              by validation accuracy, without its training state
    DIR/saved_models/<model>/events.out.*     its TensorBoard events
    DIR/handin.zip                            all of the above

No data and no caches. The folder is built beside DIR and moved into place, so DIR is never half-written; an
earlier hand-in in DIR is replaced, any other non-empty folder is refused.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from common.cli import UserError
from common.runs import load_checkpoint, save_checkpoint, slim_checkpoint

FINAL_MODELS = ("scratch_cnn", "resnet18", "mobilenet_v2")  # the architectures the course asks a final model of
ZIP_NAME = "handin.zip"


def final_runs(runs: list[dict]) -> dict[str, dict]:
    """The finished run with the best validation accuracy of each final architecture that has one."""
    best: dict[str, dict] = {}
    for r in runs:
        arch = (r.get("metrics") or {}).get("arch")
        if r.get("status") == "done" and arch in FINAL_MODELS:
            if arch not in best or r["metrics"]["best_val_acc"] > best[arch]["metrics"]["best_val_acc"]:
                best[arch] = r
    return {arch: best[arch] for arch in FINAL_MODELS if arch in best}


def check_handin_folder(folder: Path) -> None:
    """Refuse a folder that holds anything but an earlier hand-in (before a long study starts, too)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir()) and not (folder / ZIP_NAME).is_file()):
        raise UserError(f"--handin {folder} is not empty and holds no earlier hand-in; pass a new or empty folder")


def write_handin(runs: list[dict], notebook: Path | None, folder: Path, log=print) -> Path:
    """Write the hand-in folder from the study's run records and this study's executed notebook; returns the zip."""
    folder = Path(folder)
    check_handin_folder(folder)
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
