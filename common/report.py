"""The study report: one self-contained HTML page and the same content as Markdown, from the runner's study dict.

build_report(study, out_dir) writes out_dir/index.html, out_dir/report.md and every figure under out_dir/img/,
so the folder can be zipped and handed in alone. Every number comes from the study dict.

Runs that repeat one configuration over seeds (the same "repeat" key, see common/plans.py) are shown as one
configuration: every number is the mean of the finished repeats (a Stat, which also carries the sample standard
deviation and the count), accuracies are written "mean ± std", and a comparison with such a configuration says
whether the difference is within two standard errors of the difference (SPREAD_RULE).

This module assembles the page; its parts live where they are named: one section per experiment in
common/sections.py, the runs' fields and the noise rule in common/study_runs.py, the figures in
common/study_plots.py, number formats in common/formatting.py, the HTML + Markdown builder in common/document.py.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from common.document import Doc
from common.files import atomic_write, atomic_write_text
from common.formatting import DASH, f_acc, f_g, f_int, f_rate, f_time, is_num
from common.sections import SECTIONS, SUMMARY_ORDER, Group, section_for
from common.study_plots import plot_scatter, plot_val_curves
from common.study_runs import (
    NOISE,
    SPREAD_RULE,
    Spread,
    arch_key,
    best_val,
    collapse_repeats,
    delta,
    init_text,
    macro_f1,
    metric,
    mode_name,
    model_name,
    recalls,
    train_time,
)


class Report:
    """What the sections read (the finished and failed runs, the noise rule) and where they write (documents, img/)."""

    def __init__(self, study: dict, out_dir: Path) -> None:
        self.study, self.out, self.doc = study, out_dir, Doc()
        # copies with a label and vars always present, so the sections need not check
        runs = [{**r, "label": r.get("label") or r.get("name", "?"), "vars": r.get("vars") or {}}
                for r in study.get("runs") or []]
        self.done = sorted(collapse_repeats([r for r in runs if r.get("status") == "done" and r.get("metrics")]),
                           key=best_val, reverse=True)
        self.repeated = any(r.get("seeds") for r in self.done)
        self.failed = [r for r in runs if not (r.get("status") == "done" and r.get("metrics"))]
        self.numbers = {r["name"]: i for i, r in enumerate(self.done, 1)}
        self.n_test = next((r["eval"]["n"] for r in self.done if is_num((r.get("eval") or {}).get("n"))), None)
        self.spread = Spread.for_test_set(self.n_test)

    def group(self, key: str) -> list[dict]:
        """Finished runs of one group, best validation accuracy first."""
        return [r for r in self.done if key in (r.get("groups") or [])]

    def setting(self, runs: list[dict]) -> str:
        """'at 30 epochs on cpu': the epochs and devices behind a figure."""
        eps = sorted({metric(r, "epochs_run") for r in runs if is_num(metric(r, "epochs_run"))})
        devs = sorted({str(metric(r, "device") or self.study.get("device") or "?") for r in runs})
        ep = f_g(eps[0]) if len(eps) == 1 else f"{f_g(eps[0])}–{f_g(eps[-1])}" if eps else "?"
        return f"at {ep} epoch{'' if ep == '1' else 's'} on {', '.join(devs)}"

    @staticmethod
    def file(r: dict, key: str) -> Path | None:
        """One of the run's files (relative to the working directory, else to the run folder), if it exists."""
        src = (r.get("files") or {}).get(key)
        if not src:
            return None
        for path in (Path(src), Path(r.get("run_dir") or ".") / src):
            if path.is_file():
                return path
        return None

    def copy(self, r: dict, key: str) -> str | None:
        """Copy one of the run's files into img/ and return its report-relative path; None if it is missing."""
        path = self.file(r, key)
        if path is None:
            return None
        name = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', r['name'])}-{key}{path.suffix}"
        atomic_write(self.out / "img" / name, lambda tmp: Path(tmp).write_bytes(path.read_bytes()))
        return f"img/{name}"

    def plot(self, name: str, fn: Callable, *args, **kw) -> str | None:
        """Draw a figure into img/; a plotting failure costs that figure, not the report of a long study."""
        if not args[0]:  # nothing to draw: no empty frame in the report
            return None
        try:
            fn(*args, path=self.out / "img" / f"{name}.png", **kw)
            return f"img/{name}.png"
        except Exception as e:  # noqa: BLE001
            print(f"report: figure {name} failed ({type(e).__name__}: {e}); left out")
            return None


def _render(rep: Report) -> tuple[str, str]:
    """Write every section; returns (HTML page, Markdown text)."""
    s, d = rep.study, rep.doc
    title = f"Animals-10 transfer-learning study ({s.get('plan', '?')} plan)"
    d.heading(1, title)
    d.para(" · ".join(f"{k} {s[k]}" for k in ("created", "device", "torch") if s.get(k))
           + (f" · data `{s['data_dir']}`" if s.get("data_dir") else ""))
    if s.get("warnings"):
        d.box("warn", "Missing from this study", list(s["warnings"]))
    if s.get("description"):
        d.para(s["description"])
    if s.get("notes"):
        d.box("notes", "Read this first", list(s["notes"]))
    if rep.done:
        _summary(rep)
    if rep.failed:
        d.box("failed", f"Runs that did not finish ({len(rep.failed)})",
              [f"**{r['label']}**" + (f" (`{r.get('name')}`)" if r["label"] != r.get("name") else "")
               + f": {r.get('status')}" + (f" — {r['error']}" if r.get("error") else "") for r in rep.failed])
    d.html.append(d.TOC)
    d.md.append(d.TOC)
    if rep.done:
        _comparison(rep)
        for key, spec in (s.get("groups") or {}).items():
            section_for(key).render(rep, spec or {})
        for section in SECTIONS.values():  # the sections that are not a plan's group
            if not isinstance(section, Group):
                section.render(rep, {})
        _details(rep)
    _reproduce(rep)
    return d.render(title)


def _summary(rep: Report) -> None:
    """The summary box: the key answers in generated sentences and the efficiency table."""
    d, done = rep.doc, rep.done
    d.html.append('<div class="box summary">')
    d.heading(2, "Summary")
    n = rep.n_test
    items = [(f"Test set: {n} images, so one image is {100 / n:.2f} pp; " if n else "")
             + f"differences under about {rep.spread.noise * 100:.1f} pp are within noise. "
             + ("Configurations repeated over seeds (marked “n seeds”) show the mean over their runs and "
                "accuracies as mean ± sample standard deviation; every other figure is from one run. "
                + SPREAD_RULE
                if rep.repeated else "Every figure is from one run (one seed).")]
    best = done[0]
    scratch = [r for r in done if arch_key(r) == "scratch_cnn"]
    line = (f"**Best model: {best['label']}** ({model_name(best)} {mode_name(best)}, {rep.setting([best])}): "
            f"best val acc {f_acc(metric(best, 'best_val_acc'))}, test acc {f_acc(metric(best, 'test_acc'))}, "
            f"macro F1 {f_acc(macro_f1(best))}.")
    if scratch and scratch[0] is not best:
        sc = scratch[0]
        a, b = metric(sc, "test_acc"), metric(best, "test_acc")
        line += (f" It starts from {init_text(best)}; the best from-scratch run ({sc['label']}, "
                 f"{rep.setting([sc])}) reaches test acc {f_acc(a)}, {rep.spread.noisy(delta(a, b), a=a, b=b)} "
                 "against the best model.")
    elif scratch:
        line += " It is a from-scratch CNN: no transfer run beat it on validation accuracy in this study."
    items.append(line)
    items += answers(rep)
    d.bullets([i for i in items if i])
    _efficiency(rep)
    d.html.append("</div>")


def answers(rep: Report) -> list[str]:
    """The sections' sentences on the questions the study answers."""
    return [line for key in SUMMARY_ORDER for line in SECTIONS[key].answer(rep)]


def _efficiency(rep: Report) -> None:
    """Best transfer run vs best scratch run vs the fastest run within 1 pp of the best."""
    done = rep.done
    roles: dict[str, list[str]] = {}
    transfer = [r for r in done if arch_key(r) != "scratch_cnn"]
    scratch = [r for r in done if arch_key(r) == "scratch_cnn"]
    close = [r for r in done if best_val(r) >= best_val(done[0]) - NOISE and is_num(train_time(r))]
    for role, rs in (("best transfer", transfer), ("best scratch", scratch)):
        if rs:
            roles.setdefault(rs[0]["name"], []).append(role)
    fast = min(close, key=train_time) if close else None
    if fast:
        roles.setdefault(fast["name"], []).append("fastest within 1 pp of best val")
    by_name = {r["name"]: r for r in done}
    line = f"**Efficiency vs accuracy** ({rep.setting([by_name[n] for n in roles])})"
    if fast and fast is not done[0] and is_num(train_time(done[0])) and train_time(fast) > 0:
        line += (f": {fast['label']} gets within 1 pp of the best validation accuracy in "
                 f"{f_time(train_time(fast))}, {train_time(done[0]) / train_time(fast):.1f}× less than the best "
                 f"run ({f_time(train_time(done[0]))})")
    rep.doc.para(line + ".")
    rep.doc.table([("role", str, None), ("run", str, None), ("best val acc", f_acc, "max"),
                    ("test acc", f_acc, "max"), ("train time", f_time, "min"), ("train img/s", f_rate, "max"),
                    ("trainable params", f_int, None), ("peak MiB", f_int, "min")],
                   [[", ".join(rl), by_name[n]["label"], metric(by_name[n], "best_val_acc"),
                     metric(by_name[n], "test_acc"), train_time(by_name[n]), metric(by_name[n], "train_img_per_s"),
                     metric(by_name[n], "trainable_params"), metric(by_name[n], "peak_memory_mb")]
                    for n, rl in roles.items()])


def _comparison(rep: Report) -> None:
    """All finished runs in one table, plus accuracy-vs-time and validation-curve plots."""
    d, done = rep.doc, rep.done
    d.heading(2, "All runs")
    devices = [metric(r, "device") or rep.study.get("device") or DASH for r in done]
    one = len(set(devices)) == 1  # a device column saying the same thing 30 times only costs width
    d.para(f"{len(done)} finished runs, best validation accuracy first{f', all on {devices[0]}' if one else ''}. "
           "Train time includes the one-off feature extraction of cached-feature runs; peak memory is CUDA memory "
           "on a GPU, process RSS on a CPU.")
    cols = [("#", str, None), ("run", str, None), ("model / mode", str, None),
            ("epochs", f_int, None), ("lr", f_g, None), ("batch", f_int, None), ("best val acc", f_acc, "max"),
            ("test acc", f_acc, "max"), ("macro F1", f_acc, "max"), ("train time", f_time, "min"),
            ("s/epoch", f_time, "min"), ("train img/s", f_rate, "max"), ("trainable params", f_int, None),
            ("peak MiB", f_int, "min"), ("device", str, None)]
    rows = [[rep.numbers[r["name"]], r["label"], f"{model_name(r)} {mode_name(r)}", metric(r, "epochs_run"),
             metric(r, "lr"), metric(r, "batch_size"), metric(r, "best_val_acc"), metric(r, "test_acc"),
             macro_f1(r), train_time(r),
             metric(r, "seconds_per_epoch"), metric(r, "train_img_per_s"), metric(r, "trainable_params"),
             metric(r, "peak_memory_mb"), dev] for r, dev in zip(done, devices)]
    d.table(cols[:-1] if one else cols, [row[:-1] for row in rows] if one else rows)
    d.figures([(rep.plot("acc_vs_time", plot_scatter, done, rep.numbers),
                f"Test accuracy vs training time, {rep.setting(done)}."),
               (rep.plot("val_acc_curves", plot_val_curves, done, rep.numbers),
                f"Validation accuracy per epoch, {rep.setting(done)}.")])


def _details(rep: Report) -> None:
    """Curves, confusion matrix, mistakes, Grad-CAM and error analysis of the runs worth a closer look."""
    d = rep.doc
    picks: dict[str, tuple[dict, str]] = {rep.done[0]["name"]: (rep.done[0], "best run overall")}
    scratch = [r for r in rep.done if arch_key(r) == "scratch_cnn"]
    if scratch:
        picks.setdefault(scratch[0]["name"], (scratch[0], "best from-scratch run"))
    for r in rep.done:
        if (r.get("files") or {}).get("gradcam_grid"):
            picks.setdefault(r["name"], (r, "has a Grad-CAM analysis"))
    d.heading(2, "Per-model detail")
    for r, why in picks.values():
        run_detail(rep, r, why)
        run_explanations(rep, r)


def run_detail(rep: Report, r: dict, why: str) -> None:
    """One run's closer look: its numbers, per-class table, curves, confusion matrix, mistakes and Grad-CAM."""
    d = rep.doc
    d.heading(3, r["label"])
    d.para(f"{why[0].upper() + why[1:]}: {model_name(r)} {mode_name(r)}, {init_text(r)}, {rep.setting([r])}; "
           f"best val acc {f_acc(metric(r, 'best_val_acc'))} at epoch {f_g(metric(r, 'best_epoch') or '?')}, "
           f"test acc {f_acc(metric(r, 'test_acc'))}, macro F1 {f_acc(macro_f1(r))}"
           + (f" (means over seeds {', '.join(map(str, r['seeds']))}; the figures below are of one of them)"
              if r.get("seeds") else "") + f". Run folder `{r.get('run_dir') or '?'}`.")
    rec = r.get("eval") and (r["eval"].get("per_class") or {})
    if rec:
        names = list(recalls(r)) or [k for k in rec if k not in ("accuracy", "macro avg", "weighted avg")]
        d.table([("class", str, None), ("precision", f_acc, "max"), ("recall", f_acc, "max"),
                 ("F1", f_acc, "max"), ("support", f_int, None)],
                [[c] + [rec[c].get(k) for k in ("precision", "recall", "f1-score", "support")]
                 for c in names if isinstance(rec.get(c), dict)])
    d.figures([(rep.copy(r, "curves"), "Training curves."),
               (rep.copy(r, "confusion_matrix"), "Confusion matrix on the test split."),
               (rep.copy(r, "misclassified"), "Most confident mistakes.")])


def run_explanations(rep: Report, r: dict) -> None:
    """One run's Grad-CAM grid and error analysis, where gradcam.py made them."""
    d = rep.doc
    # Grad-CAM grids are many rows tall: narrower keeps them readable without a screenful per image
    d.figures([(rep.copy(r, "gradcam_grid"), "Grad-CAM overlays (gradcam.py).")],
              narrow=True)
    src = rep.file(r, "error_analysis")
    if src:
        d.para("**Error analysis** (`error_analysis.md`):")
        d.markdown(src.read_text(errors="replace"), shift=3)


def _reproduce(rep: Report) -> None:
    """Every run's command in a collapsible block."""
    runs = rep.study.get("runs") or []
    if not any(r.get("command") for r in runs):
        return
    rep.doc.heading(2, "Reproduce")
    rep.doc.para("Every run's command, in the order the runner started them "
                  f"(data `{rep.study.get('data_dir', '?')}`).")
    rep.doc.code(f"Commands of all {len(runs)} runs", "\n\n".join(
        (f"# {r.get('label') or r.get('name')}" + ("" if r.get("status") == "done" else f" ({r.get('status')})"))
        + f"\n{r.get('command') or '# (no command recorded)'}" for r in runs))


PARTS = {"summary": _summary, "comparison": _comparison, "efficiency": _efficiency}  # the parts outside sections


def build_report(study: dict, out_dir: Path) -> Path:
    """Write out_dir/index.html, out_dir/report.md and out_dir/img/*; return the index.html path."""
    out_dir = Path(out_dir)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    page, md = _render(Report(study, out_dir))
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_text(out_dir / "index.html", page)
    return out_dir / "index.html"
