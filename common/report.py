"""The study report: one self-contained HTML page and the same content as Markdown, from the runner's study dict.

build_report(study, out_dir) writes out_dir/index.html, out_dir/report.md and every figure under out_dir/img/,
so the folder can be zipped and handed in alone. Every number comes from the study dict.

Runs that repeat one configuration over seeds (the same "repeat" key, see common/plans.py) are shown as one
configuration: every number is the mean of the finished repeats (a Stat, which also carries the sample standard
deviation and the count), accuracies are written "mean ± std", and a comparison with such a configuration says
whether the difference is within two standard errors of the difference (SPREAD_RULE).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from common.data import atomic_write, atomic_write_text
from common.document import Doc
from common.formatting import DASH, f_acc, f_g, f_int, f_pp, f_rate, f_time, is_num
from common.study_plots import (
    plot_bars,
    plot_grouped,
    plot_heatmap,
    plot_lines,
    plot_scatter,
    plot_severity,
    plot_val_curves,
)
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
    sortkey,
    train_time,
    var_text,
)

# ---------- the report ----------

class _Report:
    """Holds the study, the finished runs and the documents while the sections are written."""

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

    def build(self) -> tuple[str, str]:
        """Write every section; returns (HTML page, Markdown text)."""
        s, d = self.study, self.doc
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
        if self.done:
            self.summary()
        if self.failed:
            d.box("failed", f"Runs that did not finish ({len(self.failed)})",
                  [f"**{r['label']}**" + (f" (`{r.get('name')}`)" if r["label"] != r.get("name") else "")
                   + f": {r.get('status')}" + (f" — {r['error']}" if r.get("error") else "") for r in self.failed])
        d.html.append(d.TOC)
        d.md.append(d.TOC)
        if self.done:
            self.comparison()
            for key, spec in (s.get("groups") or {}).items():
                self.group_section(key, spec or {})
            self.robustness()
            self.details()
        self.reproduce()
        return d.render(title)

    # ----- 1. summary -----

    def summary(self) -> None:
        """The summary box: the key answers in generated sentences and the efficiency table."""
        d, done = self.doc, self.done
        d.html.append('<div class="box summary">')
        d.heading(2, "Summary")
        n = self.n_test
        items = [(f"Test set: {n} images, so one image is {100 / n:.2f} pp; " if n else "")
                 + f"differences under about {self.spread.noise * 100:.1f} pp are within noise. "
                 + ("Configurations repeated over seeds (marked “n seeds”) show the mean over their runs and "
                    "accuracies as mean ± sample standard deviation; every other figure is from one run. "
                    + SPREAD_RULE
                    if self.repeated else "Every figure is from one run (one seed).")]
        best = done[0]
        scratch = [r for r in done if arch_key(r) == "scratch_cnn"]
        line = (f"**Best model: {best['label']}** ({model_name(best)} {mode_name(best)}, {self.setting([best])}): "
                f"best val acc {f_acc(metric(best, 'best_val_acc'))}, test acc {f_acc(metric(best, 'test_acc'))}, "
                f"macro F1 {f_acc(macro_f1(best))}.")
        if scratch and scratch[0] is not best:
            sc = scratch[0]
            a, b = metric(sc, "test_acc"), metric(best, "test_acc")
            line += (f" It starts from {init_text(best)}; the best from-scratch run ({sc['label']}, "
                     f"{self.setting([sc])}) reaches test acc {f_acc(a)}, {self.spread.noisy(delta(a, b), a=a, b=b)} "
                     "against the best model.")
        elif scratch:
            line += " It is a from-scratch CNN: no transfer run beat it on validation accuracy in this study."
        items.append(line)
        items += self.answers()
        d.bullets([i for i in items if i])
        self.efficiency()
        d.html.append("</div>")

    def answers(self) -> list[str]:
        """One generated sentence per question the study's groups answer."""
        return (self.answer_strategies() + self.answer_lr() + self.answer_fractions() + self.answer_regularization()
                + self.answer_imbalance() + self.answer_robustness())

    def answer_strategies(self) -> list[str]:
        """Accuracy and time per unfreezing strategy, ordered by trainable parameters."""
        out = []
        strat = self.group("strategies")
        for model in sorted({model_name(r) for r in strat}):
            rs = sorted((r for r in strat if model_name(r) == model), key=lambda r: metric(r, "trainable_params") or 0)
            top, first = max(rs, key=best_val), rs[0]
            parts = "; ".join(f"{mode_name(r)} ({f_int(metric(r, 'trainable_params'))} trainable) test "
                              f"{f_acc(metric(r, 'test_acc'))} in {f_time(train_time(r))}" for r in rs)
            t_top, t_first = train_time(top), train_time(first)
            ratio = t_top / t_first if is_num(t_top) and is_num(t_first) and t_first > 0 else None
            a, b = metric(top, "test_acc"), metric(first, "test_acc")
            gain = self.spread.noisy(delta(a, b), a=a, b=b)
            verdict = (f"training the fewest parameters ({mode_name(first)}) is best on validation" if top is first else
                       f"{mode_name(top)} is best on validation, {gain} test vs {mode_name(first)}"
                       + (f" at {ratio:.1f}× its training time" if ratio else ""))
            out.append(f"**Unfreezing depth** ({model}, {self.setting(rs)}): {parts}. On this run {verdict}.")
        return out

    def answer_lr(self) -> list[str]:
        """Best and worst learning rate and the spread, per model/strategy and for the scratch grid."""
        def desc(r: dict) -> str:
            """The run's learning rate (and batch size) in words."""
            bs = r["vars"].get("batch_size")
            return f"lr {f_g(r['vars'].get('lr'))}" + (f", batch {bs}" if bs is not None else "")

        out = []
        for key, by in (("transfer_lr", ("model", "strategy")), ("scratch_grid", ())):
            subsets: dict[str, list[dict]] = {}
            for r in self.group(key):
                subsets.setdefault(" ".join(var_text(v, r["vars"].get(v)) for v in by) or model_name(r), []).append(r)
            for name, sub in subsets.items():
                if len(sub) < 2:
                    continue
                hi, lo = max(sub, key=best_val), min(sub, key=best_val)
                out.append(f"**Learning rate** ({name}, {self.setting(sub)}): best {desc(hi)} "
                           f"(val {f_acc(metric(hi, 'best_val_acc'))}, test {f_acc(metric(hi, 'test_acc'))}), "
                           f"worst {desc(lo)} (val {f_acc(metric(lo, 'best_val_acc'))}); spread "
                           f"{self.spread.noisy(delta(best_val(hi), best_val(lo)), False, best_val(hi), best_val(lo))} "
                           "in best val acc.")
        return out

    def answer_fractions(self) -> list[str]:
        """Accuracy at the smallest data fraction as a share of the largest, per model."""
        frac = self.group("fractions")
        parts = []
        for model in sorted({model_name(r) for r in frac}):
            rs = sorted((r for r in frac if model_name(r) == model), key=lambda r: r["vars"].get("fraction") or 0)
            small, full = rs[0], rs[-1]
            a, b = metric(small, "test_acc"), metric(full, "test_acc")
            if len(rs) > 1 and is_num(a) and is_num(b) and b > 0:
                lo, hi = (var_text("fraction", r["vars"].get("fraction")) for r in (small, full))
                parts.append(f"{model} keeps {a / b:.0%} of its test acc with {lo} of the training images "
                             f"({f_acc(a)} vs {f_acc(b)} at {hi})")
        return [f"**Data fractions** ({self.setting(frac)}): " + "; ".join(parts) + "."] if parts else []

    def answer_regularization(self) -> list[str]:
        """Which options helped, hurt or stayed within noise against the baseline run."""
        reg = self.group("regularization")
        base = next((r for r in reg if r["vars"].get("option") == "baseline"), None)
        if not base:
            return []
        verdicts: dict[str, list[str]] = {"helped": [], "within seed spread": [], "within noise": [], "hurt": []}
        for r in reg:
            if r is base:
                continue
            dt, dv = delta(metric(r, "test_acc"), metric(base, "test_acc")), delta(best_val(r), best_val(base))
            flag = (self.spread.within(dt, metric(r, "test_acc"), metric(base, "test_acc")) if is_num(dt)
                    else "within noise")
            key = flag.split(",")[0] if flag else "helped" if dt > 0 else "hurt"
            verdicts[key].append(f"{r['vars'].get('option')} ({f_pp(dt)} test, {f_pp(dv)} val"
                                 + (f"; {flag.split(', ', 1)[1]}" if key == "within seed spread" else "") + ")")
        return [f"**Regularization** (vs baseline test {f_acc(metric(base, 'test_acc'))}, {self.setting(reg)}): "
                + "; ".join(f"{k}: {', '.join(v)}" for k, v in verdicts.items() if v) + "."]

    def answer_imbalance(self) -> list[str]:
        """Macro and worst-class recall per remedy."""
        imb = [r for r in self.group("imbalance") if recalls(r)]
        if not imb:
            return []
        parts = []
        for r in imb:
            rec = recalls(r)
            worst = min(rec, key=rec.get)
            macro = ((r.get("eval") or {}).get("macro") or {}).get("recall")
            parts.append(f"{self.imb_name(r, imb)}: macro recall {f_acc(macro)}, worst class {worst} {rec[worst]:.4f}")
        for ratio in sorted({r["vars"].get("ratio") for r in imb}, key=sortkey):
            same = [r for r in imb if r["vars"].get("ratio") == ratio]
            if len(same) > 1:  # remedies compete only at the same imbalance
                top = max(same, key=lambda r: min(recalls(r).values()))
                parts.append(f"highest worst-class recall at ratio {f_g(ratio)}: {top['vars'].get('remedy')}")
        return [f"**Imbalance** ({self.setting(imb)}): " + "; ".join(parts) + "."]

    def answer_robustness(self) -> list[str]:
        """The most harmful corruption and the OOD AUROC, per run that has them."""
        out = []
        for r in (r for r in self.done if r.get("corruptions")):
            c = r["corruptions"]
            acc = {k: sum(v) / len(v) for k, v in (c.get("accuracy") or {}).items() if v}
            if acc:
                worst = min(acc, key=acc.get)
                out.append(f"**Robustness** ({r['label']}, clean {f_acc(c.get('clean_acc'))}): {worst} hurts most "
                           f"(mean {acc[worst]:.4f} over severities); mean corrupted acc "
                           f"{f_acc(c.get('mean_corrupted_acc'))}, "
                           f"{f_pp(delta(c.get('mean_corrupted_acc'), c.get('clean_acc')))} vs clean.")
        for r in (r for r in self.done if r.get("ood")):
            o = r["ood"]
            out.append(f"**Out-of-distribution** ({r['label']}, {o.get('score', 'score')} on "
                       f"{o.get('ood_source', '?')}): AUROC {f_acc(o.get('auroc'))}, "
                       f"FPR at 95% TPR {f_acc(o.get('fpr_at_95_tpr'))}.")
        return out

    def efficiency(self) -> None:
        """Best transfer run vs best scratch run vs the fastest run within 1 pp of the best."""
        done = self.done
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
        line = f"**Efficiency vs accuracy** ({self.setting([by_name[n] for n in roles])})"
        if fast and fast is not done[0] and is_num(train_time(done[0])) and train_time(fast) > 0:
            line += (f": {fast['label']} gets within 1 pp of the best validation accuracy in "
                     f"{f_time(train_time(fast))}, {train_time(done[0]) / train_time(fast):.1f}× less than the best "
                     f"run ({f_time(train_time(done[0]))})")
        self.doc.para(line + ".")
        self.doc.table([("role", str, None), ("run", str, None), ("best val acc", f_acc, "max"),
                        ("test acc", f_acc, "max"), ("train time", f_time, "min"), ("train img/s", f_rate, "max"),
                        ("trainable params", f_int, None), ("peak MiB", f_int, "min")],
                       [[", ".join(rl), by_name[n]["label"], metric(by_name[n], "best_val_acc"),
                         metric(by_name[n], "test_acc"), train_time(by_name[n]), metric(by_name[n], "train_img_per_s"),
                         metric(by_name[n], "trainable_params"), metric(by_name[n], "peak_memory_mb")]
                        for n, rl in roles.items()])

    def imb_name(self, r: dict, runs: list[dict]) -> str:
        """An imbalance run's column name: the remedy, with the ratio when there are several."""
        several = len({str(x["vars"].get("ratio")) for x in runs}) > 1
        return (f"ratio {f_g(r['vars'].get('ratio'))}, " if several else "") + str(r["vars"].get("remedy"))

    # ----- 2. all runs -----

    def comparison(self) -> None:
        """All finished runs in one table, plus accuracy-vs-time and validation-curve plots."""
        d, done = self.doc, self.done
        d.heading(2, "All runs")
        devices = [metric(r, "device") or self.study.get("device") or DASH for r in done]
        one = len(set(devices)) == 1  # a device column saying the same thing 30 times only costs width
        d.para(f"{len(done)} finished runs, best validation accuracy first{f', all on {devices[0]}' if one else ''}. "
               "Train time includes the one-off feature extraction of cached-feature runs; peak memory is CUDA memory "
               "on a GPU, process RSS on a CPU.")
        cols = [("#", str, None), ("run", str, None), ("model / mode", str, None),
                ("epochs", f_int, None), ("lr", f_g, None), ("batch", f_int, None), ("best val acc", f_acc, "max"),
                ("test acc", f_acc, "max"), ("macro F1", f_acc, "max"), ("train time", f_time, "min"),
                ("s/epoch", f_time, "min"), ("train img/s", f_rate, "max"), ("trainable params", f_int, None),
                ("peak MiB", f_int, "min"), ("device", str, None)]
        rows = [[self.numbers[r["name"]], r["label"], f"{model_name(r)} {mode_name(r)}", metric(r, "epochs_run"),
                 metric(r, "lr"), metric(r, "batch_size"), metric(r, "best_val_acc"), metric(r, "test_acc"),
                 macro_f1(r), train_time(r),
                 metric(r, "seconds_per_epoch"), metric(r, "train_img_per_s"), metric(r, "trainable_params"),
                 metric(r, "peak_memory_mb"), dev] for r, dev in zip(done, devices)]
        d.table(cols[:-1] if one else cols, [row[:-1] for row in rows] if one else rows)
        d.figures([(self.plot("acc_vs_time", plot_scatter, done, self.numbers),
                    f"Test accuracy vs training time, {self.setting(done)}."),
                   (self.plot("val_acc_curves", plot_val_curves, done, self.numbers),
                    f"Validation accuracy per epoch, {self.setting(done)}.")])

    # ----- 3. one section per group -----

    def group_section(self, key: str, spec: dict) -> None:
        """A group's question, its table (group variables first) and its own table or plot."""
        d = self.doc
        runs = self.group(key)
        d.heading(2, spec.get("title") or key)
        if spec.get("question"):
            d.para(f"**Question:** {spec['question']}")
        if not runs:
            d.para("No run of this group finished.")
            return
        d.para(f"Measured {self.setting(runs)}.")
        names = spec.get("vars") or sorted({k for r in runs for k in r["vars"]})
        order = (lambda r: (model_name(r), metric(r, "trainable_params") or 0)) if key == "strategies" else (
            lambda r: [sortkey(r["vars"].get(v)) for v in names])
        runs = sorted(runs, key=order)
        cols = [(v.replace("_", " "), lambda x, v=v: var_text(v, x), None) for v in names] + [
            ("best val acc", f_acc, "max"), ("test acc", f_acc, "max"), ("macro F1", f_acc, "max"),
            ("train time", f_time, "min")]
        rows = [[r["vars"].get(v) for v in names]
                + [metric(r, "best_val_acc"), metric(r, "test_acc"), macro_f1(r), train_time(r)] for r in runs]
        if any(r.get("seeds") for r in runs):  # n of the mean ± std; 1 for a configuration run once
            cols.insert(len(names), ("seeds", f_int, None))
            rows = [row[:len(names)] + [len(r.get("seeds") or [0])] + row[len(names):] for row, r in zip(rows, runs)]
        if key == "strategies":
            cols.append(("trainable params", f_int, None))
            rows = [row + [metric(r, "trainable_params")] for row, r in zip(rows, runs)]
        base = next((r for r in runs if r["vars"].get("option") == "baseline"), None)
        if key == "regularization" and base:
            cols += [("Δ val vs baseline", f_pp, "max"), ("Δ test vs baseline", f_pp, "max")]
            rows = [row + [delta(best_val(r), best_val(base)), delta(metric(r, "test_acc"), metric(base, "test_acc"))]
                    for row, r in zip(rows, runs)]
        if key == "imbalance":
            cols += [("macro recall", f_acc, "max"), ("worst-class recall", f_acc, "max")]
            rows = [row + [((r.get("eval") or {}).get("macro") or {}).get("recall"),
                           min(recalls(r).values(), default=None)] for row, r in zip(rows, runs)]
        d.table(cols, rows)
        getattr(self, f"group_{key}", lambda runs, base: None)(runs, base)

    def group_scratch_grid(self, runs: list[dict], base) -> None:
        """Pivot table and heatmap of best val acc over learning rate x batch size."""
        lrs = sorted({r["vars"].get("lr") for r in runs}, key=sortkey, reverse=True)
        bss = sorted({r["vars"].get("batch_size") for r in runs}, key=sortkey)
        cell = {(r["vars"].get("lr"), r["vars"].get("batch_size")): metric(r, "best_val_acc") for r in runs}
        grid = [[cell.get((lr, bs)) for bs in bss] for lr in lrs]
        self.doc.para("Best validation accuracy, learning rate (rows) × batch size (columns):")
        self.doc.table([("lr \\ batch", f_g, None)] + [(f_g(bs), f_acc, "max") for bs in bss],
                       [[lr] + row for lr, row in zip(lrs, grid)])
        self.doc.figures([(self.plot("scratch_grid", plot_heatmap, grid, lrs, bss, title="best val acc"),
                           f"Best validation accuracy per learning rate and batch size, {self.setting(runs)}.")])

    def group_strategies(self, runs: list[dict], base) -> None:
        """Bar chart of test accuracy per strategy."""
        self.doc.figures([(self.plot("strategies", plot_bars, runs, title="test accuracy per unfreezing strategy"),
                           f"Test accuracy (training time on each bar), {self.setting(runs)}.")])

    def _series(self, runs: list[dict], x: str, by: tuple[str, ...]) -> dict[str, list]:
        """(x, test acc, best val acc) points per combination of the `by` variables."""
        out: dict[str, list] = {}
        for r in runs:
            if is_num(r["vars"].get(x)) and r["vars"][x] > 0:
                name = " ".join(var_text(v, r["vars"].get(v, "")) for v in by).strip() or model_name(r)
                out.setdefault(name, []).append((r["vars"][x], metric(r, "test_acc"), metric(r, "best_val_acc")))
        return out

    def group_transfer_lr(self, runs: list[dict], base) -> None:
        """Accuracy against learning rate."""
        self.doc.figures([(self.plot("transfer_lr", plot_lines, self._series(runs, "lr", ("model", "strategy")),
                                     xlabel="learning rate (log scale)", title="accuracy vs learning rate"),
                           f"Accuracy vs learning rate, {self.setting(runs)}.")])

    def group_fractions(self, runs: list[dict], base) -> None:
        """Accuracy against training-data fraction, one line per model."""
        self.doc.figures([(self.plot("fractions", plot_lines, self._series(runs, "fraction", ("model",)),
                                     xlabel="share of the training images (log scale)",
                                     title="accuracy vs training-data fraction",
                                     xfmt=lambda f: var_text("fraction", f)),
                           f"Accuracy vs share of training data, {self.setting(runs)}.")])

    def group_regularization(self, runs: list[dict], base) -> None:
        """Change in accuracy of each option against the baseline run."""
        if not base:
            return
        rs = [r for r in runs if r is not base]
        opts = [str(r["vars"].get("option")) for r in rs]

        def pp(d: float | None) -> float | None:
            return d * 100 if is_num(d) else None

        series = {"Δ test acc": [pp(delta(metric(r, "test_acc"), metric(base, "test_acc"))) for r in rs],
                  "Δ best val acc": [pp(delta(best_val(r), best_val(base))) for r in rs]}
        img = self.plot("regularization", plot_grouped, opts, series, ylabel="change vs baseline (pp)",
                        title="regularization options vs baseline", band=self.spread.noise * 100, horizontal=True)
        self.doc.figures([(img, f"Change in accuracy vs the baseline run; grey band: within noise "
                                f"(±{self.spread.noise * 100:.1f} pp), {self.setting(runs)}.")])

    def group_imbalance(self, runs: list[dict], base) -> None:
        """Per-class recall table (classes x remedies) and grouped bars."""
        runs = [r for r in runs if recalls(r)]
        if not runs:
            return
        classes = list(dict.fromkeys(c for r in runs for c in recalls(r)))
        names = [self.imb_name(r, runs) for r in runs]
        self.doc.para("Test recall per class:")
        self.doc.table([("class", str, None)] + [(n, f_acc, None) for n in names],
                       [[c] + [recalls(r).get(c) for r in runs] for c in classes])
        series = {n: [recalls(r).get(c) for c in classes] for n, r in zip(names, runs)}
        self.doc.figures([(self.plot("imbalance", plot_grouped, classes, series, ylabel="test recall",
                                     title="per-class recall by remedy"),
                           f"Per-class test recall, {self.setting(runs)}.")])

    # ----- 4. robustness -----

    def robustness(self) -> None:
        """Corruption tables and plots, and the OOD table and histograms."""
        d = self.doc
        cor = [r for r in self.done if r.get("corruptions")]
        ood = [r for r in self.done if r.get("ood")]
        if not cor and not ood:
            return
        d.heading(2, "Robustness and out-of-distribution detection")
        if cor:
            c0 = cor[0]["corruptions"]
            d.para(f"Accuracy on corrupted copies of {c0.get('n', '?')} test images (seed {c0.get('seed', '?')}), "
                   f"severities {', '.join(map(str, c0.get('severities') or []))}.")
            d.figures([(self.plot("corruptions_mean", plot_severity, cor),
                        f"Mean accuracy over corruptions vs severity, {self.setting(cor)}.")])
            for r in cor:
                c = r["corruptions"]
                sev = list(c.get("severities") or [])
                d.heading(3, f"Corruptions: {r['label']}")
                d.para(f"Clean {f_acc(c.get('clean_acc'))}, mean corrupted {f_acc(c.get('mean_corrupted_acc'))}, "
                       f"{self.setting([r])} (evaluated on {c.get('device', '?')} in {f_time(c.get('seconds'))}).")
                d.table([("corruption", str, None)] + [(f"severity {s}", f_acc, "max") for s in sev]
                        + [("mean", f_acc, "max")],
                        [[k] + list(v) + [sum(v) / len(v) if v else None]
                         for k, v in (c.get("accuracy") or {}).items()])
                d.figures([(self.copy(r, "corruptions"), f"Corrupted examples and accuracy, {r['label']}.")])
        if ood:
            d.heading(3, "Out-of-distribution detection")
            d.table([("run", str, None), ("OOD source", str, None), ("score", str, None), ("n in", f_int, None),
                     ("n out", f_int, None), ("AUROC", f_acc, "max"), ("FPR at 95% TPR", f_acc, "min"),
                     ("mean MSP in", f_acc, None), ("mean MSP out", f_acc, None)],
                    [[r["label"]] + [r["ood"].get(k) for k in ("ood_source", "score", "n_in", "n_out", "auroc",
                                                               "fpr_at_95_tpr", "msp_in_mean", "msp_out_mean")]
                     for r in ood])
            d.figures([(self.copy(r, "ood_hist"), f"Score histograms, {r['label']}.") for r in ood], cols=2)

    # ----- 5. per-model detail -----

    def details(self) -> None:
        """Curves, confusion matrix, mistakes, Grad-CAM and error analysis of the runs worth a closer look."""
        d = self.doc
        picks: dict[str, tuple[dict, str]] = {self.done[0]["name"]: (self.done[0], "best run overall")}
        scratch = [r for r in self.done if arch_key(r) == "scratch_cnn"]
        if scratch:
            picks.setdefault(scratch[0]["name"], (scratch[0], "best from-scratch run"))
        for r in self.done:
            if (r.get("files") or {}).get("gradcam_grid"):
                picks.setdefault(r["name"], (r, "has a Grad-CAM analysis"))
        d.heading(2, "Per-model detail")
        for r, why in picks.values():
            d.heading(3, r["label"])
            d.para(f"{why[0].upper() + why[1:]}: {model_name(r)} {mode_name(r)}, {init_text(r)}, {self.setting([r])}; "
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
            d.figures([(self.copy(r, "curves"), "Training curves."),
                       (self.copy(r, "confusion_matrix"), "Confusion matrix on the test split."),
                       (self.copy(r, "misclassified"), "Most confident mistakes.")])
            # Grad-CAM grids are many rows tall: narrower keeps them readable without a screenful per image
            d.figures([(self.copy(r, "gradcam_grid"), "Grad-CAM overlays (gradcam.py).")],
                      narrow=True)
            src = self.file(r, "error_analysis")
            if src:
                d.para("**Error analysis** (`error_analysis.md`):")
                d.markdown(src.read_text(errors="replace"), shift=3)

    # ----- 6. reproduce -----

    def reproduce(self) -> None:
        """Every run's command in a collapsible block."""
        runs = self.study.get("runs") or []
        if not any(r.get("command") for r in runs):
            return
        self.doc.heading(2, "Reproduce")
        self.doc.para("Every run's command, in the order the runner started them "
                      f"(data `{self.study.get('data_dir', '?')}`).")
        self.doc.code(f"Commands of all {len(runs)} runs", "\n\n".join(
            (f"# {r.get('label') or r.get('name')}" + ("" if r.get("status") == "done" else f" ({r.get('status')})"))
            + f"\n{r.get('command') or '# (no command recorded)'}" for r in runs))


def build_report(study: dict, out_dir: Path) -> Path:
    """Write out_dir/index.html, out_dir/report.md and out_dir/img/*; return the index.html path."""
    out_dir = Path(out_dir)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    page, md = _Report(study, out_dir).build()
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_text(out_dir / "index.html", page)
    return out_dir / "index.html"
