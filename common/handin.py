"""`study.py --handin DIR`: what a grader opens, a folder that runs anywhere, and one zip of it.

    DIR/report.ipynb                          the notebook, executed in DIR: the source code and the report
    DIR/report.py                             its .py twin (the same cells, percent format)
    DIR/common/, DIR/*.py, DIR/static/        the project's code: the library and the scripts (no tests, no caches)
    DIR/records/study.json, split.json        the study's records the cells read, with paths relative to DIR
    DIR/records/<run>/*.png                   each run's figures
    DIR/saved_models/<model>/best.pt          each final model: the best scratch CNN, ResNet-18 and MobileNetV2
                                              by validation accuracy, without its training state
    DIR/saved_models/<model>/events.out.*     its TensorBoard events
    DIR/<student id>.zip                      all of the above (handin.zip without --student-id)
    DIR/.handin.json                          the marker: every file above, as this project wrote them

No data and no caches, and no path of the building machine: the records, the commands and the checkpoints'
configs name the project as ".", the data folder as $DATA_DIR and the home folder as "~". The notebook is executed
in the folder being built, so it is known to run from the folder alone. The folder is built beside DIR and moved
into place, so DIR is never half-written. An earlier hand-in in DIR is recognised by its marker and replaced only
when DIR holds nothing but the files the marker lists; any other non-empty folder is refused, and so is a folder
that is, or holds, the study's own folders.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Mapping

from common.cli import UserError
from common.files import atomic_write_text
from common.notebook import ROOT, Setup, compact_image, write_notebook
from common.runs import load_checkpoint, save_checkpoint, slim_checkpoint, write_json

FINAL_MODELS = ("scratch_cnn", "resnet18", "mobilenet_v2")  # the architectures the course asks a final model of
ZIP_NAME = "handin.zip"
MARKER, MARKER_FORMAT = ".handin.json", "animals10-handin/1"
CODE = ("common", "static", "part1_scratch_cnn.py", "part2_resnet18.py", "part2_mobilenet.py", "part2_efficientnet.py",
        "evaluate.py", "gradcam.py", "submit.py", "study.py", "compress.py", "eda.py", "app.py", "requirements.txt")
DATA_DIR = "data/animals10/raw-img"  # the notebook's default data folder: the scripts' own default
STUDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def student_id(text: str) -> str:
    """--student-id: a safe file name for <id>.zip (letters, digits, '.', '_', '-'), or UserError saying so."""
    if not STUDENT_ID.fullmatch(text) or text.endswith(".") or ".." in text:
        raise UserError(f"{text!r} is not a safe file name; give letters, digits, '.', '_' or '-' "
                        "(at most 64, starting with a letter or digit), e.g. --student-id 2512345")
    return text


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


def write_handin(study: dict, split_file: Path, folder: Path, protected: Mapping[str, Path],
                 student: str | None = None, log=print) -> Path:
    """Write the hand-in folder from the study's records (as study.json holds them); returns the zip."""
    folder = Path(folder)
    check_handin_folder(folder, protected)
    chosen = final_runs(study.get("runs") or [])
    if not chosen:
        raise UserError("no finished scratch CNN, ResNet-18 or MobileNetV2 run to hand in; train one first")
    portable = _portable(protected, study)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        build = Path(tmp) / "handin"
        _copy_code(build)
        records = _records(study, Path(split_file), build / "records", portable)
        for arch, r in chosen.items():
            _save_model(Path(r["run_dir"]), build / "saved_models" / arch, portable)
            log(f"hand-in: saved_models/{arch} <- {Path(r['run_dir']).name} "
                f"(val acc {r['metrics']['best_val_acc']:.4f})")
        notebook = write_notebook(records, build, setup=Setup(".", "records/study.json", DATA_DIR))
        for derived in ("figures", *(str(p.relative_to(build)) for p in build.rglob("__pycache__"))):
            shutil.rmtree(build / derived, ignore_errors=True)  # drawn or compiled while the notebook ran
        zipped = build / (f"{student}.zip" if student else ZIP_NAME)
        _zip(build, zipped)
        files = sorted(p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file())
        write_json(build / MARKER, {"format": MARKER_FORMAT, "files": files})
        mb = lambda p: f"{p.stat().st_size / 2**20:.1f} MB"  # noqa: E731
        log(f"hand-in: {notebook.name} {mb(notebook)}, {zipped.name} {mb(zipped)}"
            + ("" if student else "; name the zip after your student id with --student-id ID"))
        old = Path(tmp) / "old"
        if folder.exists():
            folder.rename(old)  # removed with the temporary folder, once the new one is in place
        build.rename(folder)
    return folder / zipped.name


def _portable(protected: Mapping[str, Path], study: dict) -> Callable:
    """A function that rewrites every path of the building machine in a JSON-like value: the project and the
    current folder as ".", the data folder as $DATA_DIR (the folder holding it as $DATA_DIR/..), the folders of
    weights files as $WEIGHTS_DIR, the home folder as "~"."""
    def both(path: Path) -> list[str]:
        return [str(path), str(path.resolve())]
    data = Path(study.get("data_dir") or DATA_DIR)
    pairs = [(d, "$DATA_DIR") for d in both(data)] + [(d, "$DATA_DIR/..") for d in both(data.parent)]
    for weights in {str(((r.get("config") or {}).get("weights") or {}).get("source")) for r in study.get("runs") or []}:
        if Path(weights).is_file():  # a state-dict file given with --weights
            pairs += [(d, "$WEIGHTS_DIR") for d in both(Path(weights).parent)]
    pairs += [(str(ROOT), "."), (str(Path(protected["current folder"]).resolve()), "."), (str(Path.home()), "~")]
    # whole paths only (a data folder named "data" must not change the word "data"), the longest first
    pairs = [(re.compile(r"(?<![\w.~/-])" + re.escape(a) + r"(?![\w.-])"), b) for a, b in
             sorted({a: b for a, b in pairs if a not in (".", "", "/")}.items(), key=lambda ab: -len(ab[0]))]

    def portable(value):
        if isinstance(value, str):
            for old, new in pairs:
                value = old.sub(new, value)
            return value
        if isinstance(value, dict):
            return {k: portable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [portable(v) for v in value]
        return value
    return portable


def _copy_code(build: Path) -> None:
    """The library and the scripts the notebook imports and shows, without caches."""
    build.mkdir()
    for name in CODE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, build / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy2(src, build / name)


def _records(study: dict, split_file: Path, out: Path, portable: Callable) -> dict:
    """Copy what the notebook's cells read into out (the split, each finished run's figures); returns the study
    dict with its paths relative to the hand-in folder and no path of the building machine."""
    out.mkdir(parents=True)
    if split_file.is_file():
        shutil.copy2(split_file, out / "split.json")
    runs = []
    for r in study.get("runs") or []:
        r = dict(r)
        if r.get("run_dir"):
            name = Path(r["run_dir"]).name
            files = {}
            for key, src in (r.get("files") or {}).items():
                target = out / name / Path(src).name
                target.parent.mkdir(parents=True, exist_ok=True)
                compact = compact_image(Path(src)) if Path(src).suffix in (".png", ".jpg") else None
                if compact is not None:  # as the notebook embeds it: a tenth of the bytes of a full-size grid
                    target = target.with_suffix(compact[1])
                    target.write_bytes(compact[0])
                elif Path(src).suffix in (".md", ".json", ".txt"):  # text: may name files of the building machine
                    atomic_write_text(target, portable(Path(src).read_text(errors="replace")))
                else:
                    shutil.copy2(src, target)
                files[key] = f"records/{name}/{target.name}"
            r.update(run_dir=f"records/{name}", files=files)
        runs.append(r)
    records = portable({**study, "runs": runs, "working_dir": ".", "data_dir": "$DATA_DIR"})
    write_json(out / "study.json", records)
    return records


def _save_model(run_dir: Path, out: Path, portable: Callable) -> None:
    """A run's best.pt without its training state or paths of the building machine, and its TensorBoard events."""
    out.mkdir(parents=True)
    ckpt = slim_checkpoint(load_checkpoint(run_dir / "best.pt"))
    save_checkpoint({k: v if k == "model_state" else portable(v) for k, v in ckpt.items()}, out / "best.pt")
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        shutil.copy2(events, out / events.name)


def _zip(root: Path, path: Path) -> None:
    """Every file under root, by its path relative to root."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p != path):
            z.write(f, f.relative_to(root).as_posix())
