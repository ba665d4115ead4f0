"""The report as a Jupyter notebook, report.ipynb, in the course's structure: the source code and the report.

Markdown cells carry the report's text and the answer to each of the assignment's questions (common/course.py),
drawn from the measured numbers when the notebook is built. Code cells hold the code that did the work, taken from
the library's own source when the notebook is built (source_cell: one home, never a copy that can drift), and
draw every table and figure from the study's records with the report's own sections (common/sections.py,
common/report.py), so a reader can change a cell and run it again. Before each experiment's table, a cell gives
the commands that produced its runs. The notebook is executed offline with nbclient, on a kernel of this
interpreter, and written only once every cell has run without an error, so it opens with every output present.

Setup says where the cells find the project (common/), the study's records and the data; the hand-in
(common/handin.py) builds the same notebook with paths relative to its own folder. write_script writes the
notebook's .py twin in the percent format, which `python report.py` runs, drawing the figures into figures/.

The functions below the builder (load_study, show, show_run, show_explanations, show_data, show_figure) are what
its cells call.
"""
from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import io
import json
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import UserError
from common.course import course_answers
from common.data import display_name
from common.files import atomic_write_text
from common.markdown import markdown_table
from common.report import PARTS, Report, answers, run_detail, run_explanations
from common.sections import GROUPS, SECTIONS, section_for
from common.study_runs import arch_key, best_val

ROOT = Path(__file__).resolve().parent.parent  # the project: the local report's cells import common/ from here
CHAPTERS = ("Introduction and plan", "Data exploration and preprocessing", "Baseline model",
            "Hyperparameter experiments", "Scratch CNN", "Grad-CAM and error analysis", "Final comparison",
            "Conclusions and future work")


class NotebookError(UserError):
    """The notebook could not be executed, or a cell failed."""


@dataclass(frozen=True)
class Setup:
    """Where the notebook's cells find things, as its first code cell writes them."""

    project: str  # the folder holding common/ and the scripts
    study: str  # study.json, relative to the notebook's folder
    data_dir: str  # the data folder's default (ANIMALS10_DIR overrides it)

    @classmethod
    def local(cls, study: dict) -> Setup:
        """The report beside the study's own runs: this project, and the data the study used."""
        return cls(str(ROOT), "study.json", str(study.get("data_dir") or "data/animals10/raw-img"))


def build_notebook(study: dict, setup: Setup | None = None):
    """The notebook for a study dict (as study.py writes it to study.json), not yet executed."""
    import nbformat.v4 as nbf

    setup = setup or Setup.local(study)
    with tempfile.TemporaryDirectory() as tmp:  # a Report only for the sentences; the cells draw into the report
        chapters = _chapters(Report(study, Path(tmp)), setup)
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


Cells = list[tuple[str, str]]  # ("md" | "code", text)


def _chapters(rep: Report, setup: Setup) -> list[Cells]:
    """Each chapter's cells."""
    s, done = rep.study, rep.done
    scratch = [r for r in done if arch_key(r) == "scratch_cnn"]
    baseline = next((r for r in scratch if r["vars"].get("option") == "baseline"), scratch[0] if scratch else None)
    said = {k: ("md", text) for k, text in course_answers(rep).items()}
    meta = " · ".join(f"{k} {s[k]}" for k in ("created", "device", "torch") if s.get(k))
    intro = [("md", "\n\n".join([meta, s.get("description", ""),
                                 *(f"**Missing:** {w}" for w in s.get("warnings") or []),
                                 *(f"**Note:** {n}" for n in s.get("notes") or []), _INTRO])),
             ("code", _SETUP.format(project=setup.project, study=setup.study, data=setup.data_dir)),
             ("code", 'show(study, "summary", FIGURES)')]
    data = [("md", "The images come from the data folder `DATA_DIR`, split per class as `split.json` records. "
                   "Each image is decoded once, resized to the cached size, and cropped (random-resized crops with "
                   "flips and colour jitter for training, the centre crop for validation and test)."),
            ("code", "show_data(study, DATA_DIR)")]
    base = [("md", (f"The scratch CNN at the plan's base settings ({baseline['label']}) is the baseline the other "
                    "runs are compared with. " if baseline else "No scratch CNN run finished. ")
             + "The network, and the training loop every run of the study shares, as the library defines them:")]
    base += _code_cells(_BASELINE_CODE)
    if baseline:
        base += [_commands([baseline]), ("code", f"show_run(study, {baseline['name']!r}, 'baseline', FIGURES)")]
    base.append(said["p1_choices"])
    hyper = [("md", "The plan's experiments other than how much of a pretrained network to train, each after the "
                    "commands that produced its runs. The cell after the tables is plain Python over the same runs, "
                    "to change at will.")]
    for key in [k for k in s.get("groups") or {} if k != "strategies"]:
        hyper += [_commands(rep.group(key)), ("code", f"show(study, {key!r}, FIGURES)")]
    hyper += [("code", _LR_TABLE), said["p1_tuning"]]
    scratch_cells = [("md", "The from-scratch CNN with the best validation accuracy"
                      + (" is the baseline of chapter 3." if scratch and scratch[0] is baseline else "."))]
    if scratch and scratch[0] is not baseline:
        scratch_cells.append(("code", f"show_run(study, {scratch[0]['name']!r}, 'best from-scratch run', FIGURES)"))
    scratch_cells += [said["p1_findings"], said["p1_test"], said["p1_challenges"]]
    return [intro, data, base, hyper, scratch_cells, _explanations(rep), _final(rep, said),
            [said["p2_pros_cons"], said["p2_practical"], said["p2_summary"], ("md", _conclusions(rep, done))]]


def _explanations(rep: Report) -> Cells:
    """Chapter 6: the Grad-CAM code, the explained runs, faithfulness and robustness."""
    cells = [("md", "Grad-CAM of the runs study.py explained (the best scratch and the best transfer run), their "
                    "error analysis, how faithful each explanation method is to what the model uses, and how the "
                    "models stand up to corrupted and out-of-distribution images. The Grad-CAM hooks first:")]
    cells += _code_cells(_GRADCAM_CODE)
    cells += [("code", f"show_explanations(study, {r['name']!r}, FIGURES)") for r in rep.done
              if (r.get("files") or {}).get("gradcam_grid")]
    return cells + [("code", 'show(study, "faithfulness", FIGURES)'), ("code", 'show(study, "robustness", FIGURES)')]


def _final(rep: Report, said: dict[str, tuple[str, str]]) -> Cells:
    """Chapter 7: how the transfer variants are made, their runs, and every model against the others."""
    cells = [("md", "Part 2 fine-tunes ImageNet networks. How a variant replaces the head, which parameters it "
                    "trains and with which learning rate:")] + _code_cells(_TRANSFER_CODE) + [("code", _VARIANTS)]
    transfer = [r for r in rep.done if arch_key(r) != "scratch_cnn"]
    if "strategies" in (rep.study.get("groups") or {}):
        cells += [_commands(rep.group("strategies")), ("code", 'show(study, "strategies", FIGURES)')]
    elif transfer:
        cells.append(_commands(transfer))
    return cells + [("code", 'show(study, "comparison", FIGURES)'), said["p2_curves"],
                    ("code", 'show(study, "efficiency", FIGURES)'), said["p2_vs_scratch"],
                    ("code", 'show(study, "sources", FIGURES)'), ("code", 'show(study, "ensemble", FIGURES)')]


_INTRO = ("Every table and figure below is drawn by a code cell from the study's records (`study.json` and each "
          "run's metrics, evaluation and Grad-CAM files); the code cells of chapters 3, 6 and 7 hold the library's "
          "own source, so the code that trained and explained the models is on the page. Change a cell and run "
          "it again to look at the results another way; `python report.py` runs the same cells and draws the "
          "figures into `figures/`.")


def _commands(runs: list[dict]) -> tuple[str, str]:
    """A markdown cell with the commands that produced these runs."""
    cmds = [r.get("command") for r in runs if r.get("command")]
    if not cmds:
        return "md", "*(No command was recorded for these runs.)*"
    return "md", "Produced by:\n\n```bash\n" + "\n".join(dict.fromkeys(cmds)) + "\n```"


# What the notebook shows of the library, by chapter: (module, name, why), each a code cell of its own source.
_BASELINE_CODE = (
    ("common.architectures", "ScratchCNN", "the network of part 1: five conv blocks and a linear head"),
    ("common.engine", "param_groups", "only trainable parameters reach the optimizer; no decay on norms and biases"),
    ("common.engine", "make_optimizer", "the optimizer of --opt"),
    ("common.engine", "backward_step", "one optimizer step; a non-finite loss stops the run"),
    ("common.engine", "train_one_epoch", "one pass over the training batches"),
    ("common.engine", "predict", "evaluation-mode predictions"),
    ("common.engine", "evaluate", "validation: loss and accuracy"),
    ("common.trainer", "_train_epoch", "one epoch of a run: train, check the weights, validate, step the schedule"),
    ("common.metrics", "classification_metrics", "the test metrics: accuracy, macro/weighted P/R/F1, per class"),
    ("common.metrics", "confusion", "the confusion matrix"),
)
_GRADCAM_CODE = (("common.explain", "GradCAM", "Grad-CAM with a forward hook and a tensor gradient hook"),)
_TRANSFER_CODE = (
    ("common.models", "replace_head", "a new 10-class head in place of ImageNet's"),
    ("common.models", "freeze", "which parameters train in each mode"),
    ("common.models", "set_train_mode", "frozen layers keep BatchNorm in eval mode while the rest trains"),
    ("common.models", "build_model", "the network of a run: weights, head, freezing"),
)


def _code_cells(pieces) -> Cells:
    """The source cells of (module, name, why) pieces."""
    return [("code", source_cell(getattr(importlib.import_module(module), name), why))
            for module, name, why in pieces]


def source_cell(obj, why: str) -> str:
    """A code cell holding a class's or function's own source, after the imports it needs and a line saying why.

    Generated when the notebook is built, so it is the library's code as it ran; executed, it defines the same
    object in the notebook.
    """
    module = inspect.getmodule(obj)
    source = textwrap.dedent(inspect.getsource(obj))
    used = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)} - {obj.__name__} - set(dir(builtins))
    plain, named = set(), {}
    for name in used & set(vars(module)):
        origin, alias = _origin(module, name)
        if origin is None:
            plain.add(alias)
        else:
            named.setdefault(origin, set()).add(name)
    imports = sorted(plain) + [f"from {origin} import {', '.join(sorted(names))}" for origin, names in
                               sorted(named.items())]
    path = Path(module.__file__).resolve().relative_to(ROOT).as_posix()
    return "\n".join([f"# {path}: {obj.__name__}, {why}", "from __future__ import annotations", "", *imports, "",
                      "", source.rstrip()])


def _origin(module, name: str) -> tuple[str | None, str]:
    """Where the notebook imports a module-level name of `module` from: (package, name), or (None, an import line)
    for a module. The shortest package that has the same object, as `from tqdm import tqdm` for tqdm.std's."""
    value = vars(module)[name]
    if inspect.ismodule(value):
        full = value.__name__
        parent, _, leaf = full.rpartition(".")
        return (parent, name) if leaf == name and parent else (None, f"import {full}" + (
            "" if full == name else f" as {name}"))
    origin = getattr(value, "__module__", None)
    if isinstance(origin, str) and getattr(sys.modules.get(origin), name, None) is value:
        parts = origin.split(".")
        return next(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                    if getattr(sys.modules.get(".".join(parts[:i])), name, None) is value), name
    return module.__name__, name


_SETUP = '''from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT = Path(r"{project}")  # the folder holding common/ and the scripts
DATA_DIR = Path(os.environ.get("ANIMALS10_DIR", r"{data}"))  # the data folder: set it to your copy of Animals-10
FIGURES = Path("figures")  # the cells draw their figures here
sys.path.insert(0, str(PROJECT))
from common.notebook import (finished, load_study, show, show_data, show_explanations,  # noqa: E402
                             show_figure, show_run)

study = load_study(r"{study}")  # the study's records: its runs' metrics, evaluations and figures'''

_VARIANTS = '''from common.architectures import ARCHS
from common.models import build_model, count_parameters

# The five transfer variants of the assignment. The runs loaded ImageNet weights (their records say from where);
# the structure does not depend on them, so this cell builds each variant with random weights.
for arch, mode in [("resnet18", "fc"), ("resnet18", "blocks34"), ("resnet18", "full"),
                   ("mobilenet_v2", "fc"), ("mobilenet_v2", "full")]:
    spec = ARCHS[arch]
    model, _ = build_model(arch, 10, mode, weights="none")
    trainable, total = count_parameters(model)
    trains = ", ".join(spec.modes[mode]) if spec.modes[mode] else "every layer"
    print(f"{spec.display} {mode}: the head {spec.head} is {model.get_submodule(spec.head)}; it trains {trains}: "
          f"{trainable:,} of {total:,} parameters, default lr {spec.lr[mode]:g}")'''


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


def write_notebook(study: dict, folder: Path, timeout: int = 600, setup: Setup | None = None) -> Path:
    """Build and execute the study's notebook in folder; write folder/report.ipynb only when every cell ran, and
    its .py twin folder/report.py."""
    import nbformat

    nb = execute_notebook(build_notebook(study, setup), Path(folder), timeout)
    path = Path(folder) / "report.ipynb"
    atomic_write_text(path, nbformat.writes(nb))
    write_script(nb, path.with_suffix(".py"))
    return path


def write_script(nb, path: Path) -> None:
    """The notebook's .py twin in the percent format (as jupytext writes it): `python report.py` runs its cells."""
    future = "from __future__ import annotations"  # a script may say it once, at its top only
    parts = ["# The notebook report.ipynb as a script: `python report.py` runs its cells and draws the figures into\n"
             "# figures/. Generated from the same cells as the notebook; edit the notebook, not this file.\n"
             + future]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append("# %% [markdown]\n" + "\n".join(f"# {line}".rstrip() for line in cell.source.splitlines()))
        else:
            parts.append("# %%\n" + "\n".join(line for line in cell.source.splitlines() if line != future))
    atomic_write_text(path, "\n\n".join(parts) + "\n")


# ---- what the notebook's cells call ----

def load_study(path: str | Path) -> dict:
    """study.json, with its run folders and files found from the folder study.py ran in (the hand-in's records:
    from the notebook's folder)."""
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


def show_data(study: dict, data_dir: str | Path, per_class: int = 4) -> None:
    """Images per class in each split (from split.json), and a few training images of each class from data_dir."""
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
    _sample_grid(split, names, Path(data_dir), per_class)


def _sample_grid(split, names: list[str], data_dir: Path, per_class: int) -> None:
    """The first training images of each class, decoded from the data folder (when it is there)."""
    from common.decode import decode_image
    from common.plots import image_grid_figure
    train = split.indices["train"]
    picks = [i for k in range(len(names)) for i in train[split.labels[train] == k][:per_class]]
    files = [data_dir / split.entries[i]["path"] for i in picks]
    images = [decode_image(f, 160) if f.is_file() else None for f in files]
    if any(img is None for img in images):
        _display_markdown(f"The data folder `{data_dir}` is not here (set `DATA_DIR` in the first code cell): "
                          "no sample images.")
        return
    show_figure(image_grid_figure(images, [names[split.labels[i]] for i in picks], "Training images, resized",
                                  cols=per_class * 2, tile=(1.6, 1.8)))


def show_figure(fig, out: str | Path = "figures") -> None:
    """Display a matplotlib figure as PNG and close it; outside a notebook (report.py), save it into `out`."""
    import matplotlib.pyplot as plt
    if not _in_notebook():
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"figure-{len(list(out.glob('figure-*.png'))) + 1:02d}.png"
        fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
        plt.close(fig)
        print(f"[figure: {path}]")
        return
    from IPython.display import Image, display
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue()))


FIGURE_DPI = 80  # sharp on a screen at the notebook's width, a third of the bytes of 150 dpi
MAX_WIDTH = 1000  # the run's own figures (grids of many images) are embedded at most this wide
JPEG_ABOVE = 250_000  # a figure whose PNG is larger than this (photos) is embedded as a JPEG


def _in_notebook() -> bool:
    """Whether the cells run on a Jupyter kernel (else report.py runs them as a script)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _display_markdown(text: str) -> None:
    if not _in_notebook():
        print(text, end="\n\n")
        return
    from IPython.display import Markdown, display
    display(Markdown(text))


def compact_image(path: Path) -> tuple[bytes, str] | None:
    """A figure file at most MAX_WIDTH wide, as PNG, or as JPEG where the PNG is larger than JPEG_ABOVE (photo
    grids): (bytes, ".png" or ".jpg"); None when it cannot be read. What the notebook embeds and the hand-in keeps."""
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    if img.shape[1] > MAX_WIDTH:
        img = cv2.resize(img, (MAX_WIDTH, round(img.shape[0] * MAX_WIDTH / img.shape[1])), interpolation=cv2.INTER_AREA)
    data = cv2.imencode(".png", img)[1]
    if len(data) > JPEG_ABOVE:
        return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes(), ".jpg"
    return data.tobytes(), ".png"


def _display_file(path: Path) -> None:
    """A run's figure, compacted (compact_image), so the notebook stays small enough to hand in."""
    if not _in_notebook():
        print(f"[figure: {path}]")
        return
    from IPython.display import Image, display
    compact = compact_image(path)
    if compact is None:
        _display_markdown(f"*(figure `{path.name}` could not be read)*")
        return
    display(Image(data=compact[0], format="jpeg" if compact[1] == ".jpg" else "png"))


def _display_doc(rep: Report) -> None:
    """The Markdown a report part wrote, headings one level down, each figure as an image output."""
    for chunk in rep.doc.md:
        chunk = re.sub(r"(?m)^(#{1,5})(?=\s)", r"#\1", chunk)
        pos = 0
        for m in re.finditer(r"!\[([^\]]*)\]\(([^)]+)\)", chunk):
            if chunk[pos:m.start()].strip():
                _display_markdown(chunk[pos:m.start()])
            _display_file(rep.out / m[2])
            _display_markdown(f"*{m[1]}*")
            pos = m.end()
        if chunk[pos:].strip():
            _display_markdown(chunk[pos:])
