"""The report as a Jupyter notebook, runs/report/report.ipynb, in the course's structure.

Markdown cells carry the report's text and its answers, drawn from the measured numbers when the notebook is
built; code cells load study.json and the run folders and draw every table and figure with the report's own
sections (common/sections.py, common/report.py), so a reader can change a cell and run it again. The notebook is
executed offline with nbclient, on a kernel of this interpreter, and written only once every cell has run without
an error, so it opens with every output present.

The functions below the builder (load_study, show, show_run, show_explanations, show_data, show_figure) are what
its cells call.
"""
from __future__ import annotations

import io
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from common.cli import UserError
from common.data import display_name
from common.files import atomic_write_text
from common.markdown import markdown_table
from common.report import PARTS, Report, answers, run_detail, run_explanations
from common.sections import GROUPS, SECTIONS, section_for
from common.study_runs import arch_key, best_val

ROOT = Path(__file__).resolve().parent.parent  # the project: the notebook's cells import common/ from here
CHAPTERS = ("Introduction and plan", "Data exploration and preprocessing", "Baseline model",
            "Hyperparameter experiments", "Scratch CNN", "Grad-CAM and error analysis", "Final comparison",
            "Conclusions and future work")


class NotebookError(UserError):
    """The notebook could not be executed, or a cell failed."""


def build_notebook(study: dict):
    """The notebook for a study dict (as study.py writes it to study.json), not yet executed."""
    import nbformat.v4 as nbf

    with tempfile.TemporaryDirectory() as tmp:  # a Report only for the sentences; the cells draw into the report
        chapters = _chapters(Report(study, Path(tmp)))
    cells = []
    md = lambda text: cells.append(nbf.new_markdown_cell(text))  # noqa: E731
    code = lambda text: cells.append(nbf.new_code_cell(text))  # noqa: E731
    for number, (title, chapter) in enumerate(zip(CHAPTERS, chapters), 1):
        md(f"## {number}. {title}" if number > 1 else
           f"# Animals-10 transfer-learning study ({study.get('plan', '?')} plan)\n\n## 1. {title}")
        for kind, text in chapter:
            (md if kind == "md" else code)(text)
    nb = nbf.new_notebook(cells=cells)
    nb.metadata.update(kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"},
                       language_info={"name": "python"})
    return nb


def _chapters(rep: Report) -> list[list[tuple[str, str]]]:
    """Each chapter's cells, ("md" | "code", text)."""
    s, done = rep.study, rep.done
    scratch = [r for r in done if arch_key(r) == "scratch_cnn"]
    baseline = next((r for r in scratch if r["vars"].get("option") == "baseline"), scratch[0] if scratch else None)
    explained = [r for r in done if (r.get("files") or {}).get("gradcam_grid")]
    tuning = [k for k in s.get("groups") or {} if k != "strategies"]
    meta = " · ".join(f"{k} {s[k]}" for k in ("created", "device", "torch") if s.get(k))
    intro = [("md", "\n\n".join([meta, s.get("description", ""),
                                 *(f"**Missing:** {w}" for w in s.get("warnings") or []),
                                 *(f"**Note:** {n}" for n in s.get("notes") or []),
                                 "Every table and figure below is drawn by a code cell from `study.json` and the run "
                                 "folders; change a cell and run it again to look at the results another way."])),
             ("code", _SETUP.format(root=str(ROOT))), ("code", 'show(study, "summary")')]
    data = [("md", f"The images come from `{s.get('data_dir', '?')}`, split per class as `split.json` records. "
                   "Each image is decoded once, resized to the cached size, and cropped (random-resized crops with "
                   "flips and colour jitter for training, the centre crop for validation and test)."),
            ("code", "show_data(study)")]
    base = [("md", f"The scratch CNN at the plan's base settings ({baseline['label']}) is the baseline the other "
                   "runs are compared with." if baseline else "No scratch CNN run finished, so there is no baseline.")]
    if baseline:
        base.append(("code", f"show_run(study, {baseline['name']!r}, 'baseline')"))
    hyper = [("md", "The plan's experiments other than how much of a pretrained network to train. "
                    "The cell after the tables is plain Python over the same runs, to change at will.")]
    hyper += [("code", f"show(study, {k!r})") for k in tuning] + [("code", _LR_TABLE)]
    scratch_cells = [("md", "The from-scratch CNN with the best validation accuracy"
                      + (" is the baseline of chapter 3." if scratch and scratch[0] is baseline else "."))]
    if scratch and scratch[0] is not baseline:
        scratch_cells.append(("code", f"show_run(study, {scratch[0]['name']!r}, 'best from-scratch run')"))
    cams = [("md", "Grad-CAM of the runs study.py explained (the best scratch and the best transfer run), their "
                   "error analysis, how faithful each explanation method is to what the model uses, and how the "
                   "models stand up to corrupted and out-of-distribution images.")]
    cams += [("code", f"show_explanations(study, {r['name']!r})") for r in explained]
    cams += [("code", 'show(study, "faithfulness")'), ("code", 'show(study, "robustness")')]
    final = [("code", 'show(study, "strategies")')] if "strategies" in (s.get("groups") or {}) else []
    final += [("code", 'show(study, "comparison")'), ("code", 'show(study, "efficiency")')]
    return [intro, data, base, hyper, scratch_cells, cams, final, [("md", _conclusions(rep, done))]]


def _conclusions(rep: Report, done: list[dict]) -> str:
    """The answers the numbers give, then what this study did not measure."""
    found = answers(rep) if done else []
    best = max(done, key=best_val) if done else None
    lines = ([f"- **Best model:** {best['label']} (val {best['metrics']['best_val_acc']:.4f}, "
              f"test {best['metrics']['test_acc']:.4f})."] if best else ["- No run finished."])
    lines += [f"- {a}" for a in found]
    missing = [spec["title"] for key, spec in GROUPS.items() if key not in (rep.study.get("groups") or {})]
    future = [f"- Not measured by this plan: {t.lower()} (`study.py --plan full` runs it)." for t in missing]
    future += [f"- Rerun {r['label']}: it {r.get('status')}." for r in rep.failed]
    if not rep.repeated:
        future.append("- Every figure is from one seed: repeat the closest comparisons over seeds before relying "
                      "on differences within the noise.")
    return "### Conclusions\n\n" + "\n".join(lines) + "\n\n### Future work\n\n" + "\n".join(future)


_SETUP = '''import sys
from pathlib import Path

PROJECT = Path(r"{root}")  # the project's folder, for its common/ package: change it if you moved the project
sys.path.insert(0, str(PROJECT))
from common.notebook import (finished, load_study, show, show_data, show_explanations,  # noqa: E402
                             show_figure, show_run)

study = load_study("study.json")  # written by study.py beside this notebook'''

_LR_TABLE = '''import matplotlib.pyplot as plt

runs = [r for r in finished(study) if r["vars"].get("lr") is not None]
print(f"{'run':42s} {'lr':>8s} {'batch':>5s} {'val':>7s} {'test':>7s}")
for r in sorted(runs, key=lambda r: (str(r["vars"].get("model")), r["vars"]["lr"])):
    m = r["metrics"]
    print(f"{r['label'][:42]:42s} {r['vars']['lr']:8.0e} {m['batch_size']:5d} {m['best_val_acc']:7.4f} "
          f"{m['test_acc']:7.4f}")
fig, ax = plt.subplots(figsize=(7, 4))
for r in runs:
    history = r["metrics"]["history"]
    ax.plot([h["epoch"] for h in history], [h["val_acc"] for h in history], label=r["label"])
ax.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy per epoch")
ax.legend(fontsize=7)
show_figure(fig)'''


def execute_notebook(nb, folder: Path, timeout: int = 600):
    """Run every cell in `folder` on a kernel of this interpreter; NotebookError names the cell that failed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    with tempfile.TemporaryDirectory() as kernels:
        spec = Path(kernels) / "project"
        spec.mkdir()
        # this interpreter, whatever "python3" kernel the machine has registered
        (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                               "{connection_file}"],
                                                      "display_name": "project", "language": "python"}))
        km = KernelManager(kernel_name="project", kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]))
        client = NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(folder)}})
        try:
            client.execute()
        except CellExecutionError as e:
            raise NotebookError(f"a notebook cell failed: {str(e).strip().splitlines()[-1]}") from None
        except Exception as e:  # noqa: BLE001 - the kernel is another process: no start, a crash, a timeout
            raise NotebookError(f"the notebook's kernel failed: {type(e).__name__}: {e}") from None
    return nb


def write_notebook(study: dict, folder: Path, timeout: int = 600) -> Path:
    """Build and execute the study's notebook; write folder/report.ipynb only when every cell ran."""
    import nbformat

    nb = execute_notebook(build_notebook(study), Path(folder), timeout)
    path = Path(folder) / "report.ipynb"
    atomic_write_text(path, nbformat.writes(nb))
    return path


# ---- what the notebook's cells call ----

def load_study(path: str | Path) -> dict:
    """study.json, with its run folders and files found from the folder study.py ran in."""
    study = json.loads(Path(path).read_text())
    base = Path(study.get("working_dir") or ".")
    rebase = lambda p: p if p is None or Path(p).is_absolute() else str(base / p)  # noqa: E731
    study["data_dir"] = rebase(study.get("data_dir"))
    for r in study.get("runs") or []:
        r["run_dir"] = rebase(r.get("run_dir"))
        r["files"] = {k: rebase(v) for k, v in (r.get("files") or {}).items()}
    return study


def finished(study: dict) -> list[dict]:
    """The runs that finished, with their metrics."""
    return [r for r in study.get("runs") or [] if r.get("status") == "done" and r.get("metrics")]


def show(study: dict, part: str, out: str | Path = ".") -> None:
    """Draw one part of the report in the notebook: a section (a plan group, "robustness") or one of PARTS."""
    rep = Report(study, Path(out))
    if not rep.done:
        _display_markdown("No run finished.")
        return
    if part in PARTS:
        PARTS[part](rep)
    elif part in SECTIONS or part in (study.get("groups") or {}):
        section_for(part).render(rep, (study.get("groups") or {}).get(part) or {})
    else:
        raise ValueError(f"no report part {part!r}; choose from {', '.join([*PARTS, *SECTIONS])}")
    _display_doc(rep)


def show_run(study: dict, name: str, why: str, out: str | Path = ".") -> None:
    """One run's numbers, per-class table, curves, confusion matrix and most confident mistakes."""
    rep = Report(study, Path(out))
    run_detail(rep, _run(rep, name), why)
    _display_doc(rep)


def show_explanations(study: dict, name: str, out: str | Path = ".") -> None:
    """One run's Grad-CAM grid and error analysis."""
    rep = Report(study, Path(out))
    run = _run(rep, name)
    rep.doc.heading(3, f"{run['label']}: Grad-CAM")
    run_explanations(rep, run)
    _display_doc(rep)


def _run(rep: Report, name: str) -> dict:
    run = next((r for r in rep.done if r["name"] == name), None)
    if run is None:
        raise ValueError(f"no finished run named {name!r}")
    return run


def show_data(study: dict, per_class: int = 4) -> None:
    """Images per class in each split (from split.json), and a few training images of each class."""
    import matplotlib.pyplot as plt

    from common.split import read_split
    run_dir = next((Path(r["run_dir"]) for r in finished(study)), None)
    path = run_dir.parent / "split.json" if run_dir else None
    if path is None or not path.is_file():
        _display_markdown("No `split.json` beside the run folders.")
        return
    split = read_split(path)
    names = [display_name(c) for c in split.classes]
    counts = {part: np.bincount(split.labels[idx], minlength=len(names)) for part, idx in split.indices.items()}
    table = markdown_table(["class", *counts], [[n, *(int(counts[p][i]) for p in counts)] for i, n in enumerate(names)],
                           "l" + "r" * len(counts))
    _display_markdown(f"{table}\n\n{len(split.labels)} images in {len(names)} classes.")
    fig, ax = plt.subplots(figsize=(8, 3))
    for k, (part, c) in enumerate(counts.items()):
        ax.bar(np.arange(len(names)) + 0.27 * (k - 1), c, 0.27, label=part)
    ax.set_xticks(range(len(names)), names, rotation=30)
    ax.set(ylabel="images", title="Images per class and split")
    ax.legend()
    show_figure(fig)
    _sample_grid(split, names, Path(study.get("data_dir") or ""), per_class)


def _sample_grid(split, names: list[str], data_dir: Path, per_class: int) -> None:
    """The first training images of each class, decoded from the data folder (when it is there)."""
    from common.decode import decode_image
    from common.plots import image_grid_figure
    train = split.indices["train"]
    picks = [i for k in range(len(names)) for i in train[split.labels[train] == k][:per_class]]
    files = [data_dir / split.entries[i]["path"] for i in picks]
    images = [decode_image(f, 160) if f.is_file() else None for f in files]
    if any(img is None for img in images):
        _display_markdown(f"The data folder `{data_dir}` is not here: no sample images.")
        return
    show_figure(image_grid_figure(images, [names[split.labels[i]] for i in picks], "Training images, resized",
                                  cols=per_class * 2, tile=(1.6, 1.8)))


def show_figure(fig) -> None:
    """Display a matplotlib figure as PNG, whatever the backend, and close it."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue()))


def _display_markdown(text: str) -> None:
    from IPython.display import Markdown, display
    display(Markdown(text))


def _display_doc(rep: Report) -> None:
    """The Markdown a report part wrote, headings one level down, each figure as a PNG output."""
    from IPython.display import Image, display
    for chunk in rep.doc.md:
        chunk = re.sub(r"(?m)^(#{1,5})(?=\s)", r"#\1", chunk)
        pos = 0
        for m in re.finditer(r"!\[([^\]]*)\]\(([^)]+)\)", chunk):
            if chunk[pos:m.start()].strip():
                _display_markdown(chunk[pos:m.start()])
            display(Image(filename=str(rep.out / m[2])))
            _display_markdown(f"*{m[1]}*")
            pos = m.end()
        if chunk[pos:].strip():
            _display_markdown(chunk[pos:])
