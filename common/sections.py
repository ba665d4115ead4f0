"""The study's experiments, one object each: its plan entry (title, question, variables) and its part of the report.

SECTIONS is the one registry: common/plans.py writes a plan's "groups" from it (GROUPS), and common/report.py
writes one section per group of the study with it, then the robustness section, and asks each for its sentences
in the summary (in SUMMARY_ORDER). A plan file's group the registry does not know gets the plain runs table.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from common.formatting import DASH, f_acc, f_g, f_int, f_mib, f_pp, f_rate, f_time, is_num
from common.sources import gap_text
from common.study_plots import plot_bars, plot_depth, plot_grouped, plot_heatmap, plot_lines, plot_severity
from common.study_runs import (
    arch_key,
    best_val,
    delta,
    macro_f1,
    metric,
    mode_name,
    model_name,
    recalls,
    sortkey,
    train_time,
    var_text,
)

if TYPE_CHECKING:
    from common.report import Report

Column = tuple[str, Callable, "str | None"]  # header, formatter, which value is best ("max", "min" or None)


class Section:
    """A part of the report that answers a question of its own, and its sentences in the summary."""

    key = ""
    title = ""
    question = ""

    def render(self, rep: Report, spec: dict) -> None:
        """Write the section into rep.doc; spec is the study's entry for it (title, question, vars)."""
        raise NotImplementedError

    def answer(self, rep: Report) -> list[str]:
        """The summary's sentences about this section's question."""
        return []


TRAINABLE: tuple[Column, Callable[[dict], object]] = (("trainable params", f_int, None),
                                                     lambda r: metric(r, "trainable_params"))


def _by_trainable(runs: list[dict]) -> list[dict]:
    """Per model, from the fewest trainable parameters to the most."""
    return sorted(runs, key=lambda r: (model_name(r), metric(r, "trainable_params") or 0))


class Group(Section):
    """An experiment of the plan: runs that vary `vars`, shown as one table (group variables first) and a figure."""

    vars: tuple[str, ...] = ()

    def __init__(self, key: str | None = None) -> None:
        if key is not None:  # a plan file's own group: its runs table, without a figure
            self.key = key

    def spec(self) -> dict:
        """The group's entry in a plan: title, question and variables."""
        return {"title": self.title, "question": self.question, "vars": list(self.vars)}

    def order(self, runs: list[dict], names: list[str]) -> list[dict]:
        """The table's rows: by the group variables, the reference settings first."""
        return sorted(runs, key=lambda r: [sortkey(r["vars"].get(v)) for v in names])

    def columns(self, runs: list[dict]) -> list[tuple[Column, Callable[[dict], object]]]:
        """Columns after the common ones, each with the value it shows for a run."""
        return []

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """The group's own table or figure, after its runs table."""

    def render(self, rep: Report, spec: dict) -> None:
        """The group's question, its runs table and its figure."""
        d = rep.doc
        runs = rep.group(self.key)
        d.heading(2, spec.get("title") or self.key)
        if spec.get("question"):
            d.para(f"**Question:** {spec['question']}")
        if not runs:
            d.para("No run of this group finished.")
            return
        d.para(f"Measured {rep.setting(runs)}.")
        names = spec.get("vars") or sorted({k for r in runs for k in r["vars"]})
        runs = self.order(runs, names)
        columns = [((v.replace("_", " "), lambda x, v=v: var_text(v, x), None), lambda r, v=v: r["vars"].get(v))
                   for v in names]
        if any(r.get("seeds") for r in runs):  # n of the mean ± std; 1 for a configuration run once
            columns.append((("seeds", f_int, None), lambda r: len(r.get("seeds") or [0])))
        columns += [(("best val acc", f_acc, "max"), lambda r: metric(r, "best_val_acc")),
                    (("test acc", f_acc, "max"), lambda r: metric(r, "test_acc")),
                    (("macro F1", f_acc, "max"), macro_f1), (("train time", f_time, "min"), train_time),
                    *self.columns(runs)]
        d.table([col for col, _ in columns], [[value(r) for _, value in columns] for r in runs])
        self.figure(rep, runs)


def _series(runs: list[dict], x: str, by: tuple[str, ...]) -> dict[str, list]:
    """(x, test acc, best val acc) points per combination of the `by` variables."""
    out: dict[str, list] = {}
    for r in runs:
        if is_num(r["vars"].get(x)) and r["vars"][x] > 0:
            name = " ".join(var_text(v, r["vars"].get(v, "")) for v in by).strip() or model_name(r)
            out.setdefault(name, []).append((r["vars"][x], metric(r, "test_acc"), metric(r, "best_val_acc")))
    return out


def _lr_answers(rep: Report, runs: list[dict], by: tuple[str, ...]) -> list[str]:
    """Best and worst learning rate and the spread in best val acc, per combination of the `by` variables."""
    def desc(r: dict) -> str:
        """The run's learning rate (and batch size) in words."""
        bs = r["vars"].get("batch_size")
        return f"lr {f_g(r['vars'].get('lr'))}" + (f", batch {bs}" if bs is not None else "")

    subsets: dict[str, list[dict]] = {}
    for r in runs:
        subsets.setdefault(" ".join(var_text(v, r["vars"].get(v)) for v in by) or model_name(r), []).append(r)
    out = []
    for name, sub in subsets.items():
        if len(sub) < 2:
            continue
        hi, lo = max(sub, key=best_val), min(sub, key=best_val)
        out.append(f"**Learning rate** ({name}, {rep.setting(sub)}): best {desc(hi)} "
                   f"(val {f_acc(metric(hi, 'best_val_acc'))}, test {f_acc(metric(hi, 'test_acc'))}), "
                   f"worst {desc(lo)} (val {f_acc(metric(lo, 'best_val_acc'))}); spread "
                   f"{rep.spread.noisy(delta(best_val(hi), best_val(lo)), False, best_val(hi), best_val(lo))} "
                   "in best val acc.")
    return out


class ScratchGrid(Group):
    """The from-scratch CNN over a learning rate x batch size grid."""

    key = "scratch_grid"
    title = "Scratch CNN: learning rate x batch size"
    question = "How do learning rate and batch size affect the CNN trained from scratch?"
    vars = ("lr", "batch_size")

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Pivot table and heatmap of best val acc over learning rate x batch size."""
        lrs = sorted({r["vars"].get("lr") for r in runs}, key=sortkey, reverse=True)
        bss = sorted({r["vars"].get("batch_size") for r in runs}, key=sortkey)
        cell = {(r["vars"].get("lr"), r["vars"].get("batch_size")): metric(r, "best_val_acc") for r in runs}
        grid = [[cell.get((lr, bs)) for bs in bss] for lr in lrs]
        rep.doc.para("Best validation accuracy, learning rate (rows) × batch size (columns):")
        rep.doc.table([("lr \\ batch", f_g, None)] + [(f_g(bs), f_acc, "max") for bs in bss],
                      [[lr] + row for lr, row in zip(lrs, grid)])
        rep.doc.figures([(rep.plot(self.key, plot_heatmap, grid, lrs, bss, title="best val acc"),
                          f"Best validation accuracy per learning rate and batch size, {rep.setting(runs)}.")])

    def answer(self, rep: Report) -> list[str]:
        """Best and worst point of the grid."""
        return _lr_answers(rep, rep.group(self.key), ())


class Strategies(Group):
    """How much of a pretrained network to fine-tune."""

    key = "strategies"
    title = "Fine-tuning strategies"
    question = ("How much of the pretrained network should be trained: head only, BatchNorm only, the top blocks, "
                "everything, gradually, or with per-block learning rates?")
    vars = ("model", "strategy")

    def order(self, runs: list[dict], names: list[str]) -> list[dict]:
        """Per model, from the fewest trainable parameters to the most."""
        return _by_trainable(runs)

    def columns(self, runs: list[dict]) -> list[tuple[Column, Callable[[dict], object]]]:
        """The trainable parameters, the cost of each strategy."""
        return [TRAINABLE]

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Bar chart of test accuracy per strategy."""
        rep.doc.figures([(rep.plot(self.key, plot_bars, runs, title="test accuracy per unfreezing strategy"),
                          f"Test accuracy (training time on each bar), {rep.setting(runs)}.")])

    def answer(self, rep: Report) -> list[str]:
        """Accuracy and time per unfreezing strategy, ordered by trainable parameters."""
        out = []
        strat = rep.group(self.key)
        for model in sorted({model_name(r) for r in strat}):
            rs = _by_trainable([r for r in strat if model_name(r) == model])
            top, first = max(rs, key=best_val), rs[0]
            parts = "; ".join(f"{mode_name(r)} ({f_int(metric(r, 'trainable_params'))} trainable) test "
                              f"{f_acc(metric(r, 'test_acc'))} in {f_time(train_time(r))}" for r in rs)
            t_top, t_first = train_time(top), train_time(first)
            ratio = t_top / t_first if is_num(t_top) and is_num(t_first) and t_first > 0 else None
            a, b = metric(top, "test_acc"), metric(first, "test_acc")
            verdict = (f"training the fewest parameters ({mode_name(first)}) is best on validation" if top is first else
                       f"{mode_name(top)} is best on validation, {rep.spread.noisy(delta(a, b), a=a, b=b)} test vs "
                       f"{mode_name(first)}" + (f" at {ratio:.1f}× its training time" if ratio else ""))
            out.append(f"**Unfreezing depth** ({model}, {rep.setting(rs)}): {parts}. On this run {verdict}.")
        return out


class Depth(Group):
    """Strategy 1 of the course text as a curve: the last L blocks and the head trained from the start (top mode),
    for L = 1 up to every block, beside gradual unfreezing of the same blocks."""

    key = "depth"
    title = "Depth of fine-tuning"
    question = ("How many of the pretrained network's blocks should be fine-tuned, and where does adding blocks "
                "stop paying?")
    vars = ("model", "strategy", "blocks")

    def order(self, runs: list[dict], names: list[str]) -> list[dict]:
        """Per model, by the blocks trained; its gradual run last."""
        return sorted(runs, key=lambda r: (model_name(r), r["vars"].get("strategy") == "gradual",
                                           r["vars"].get("blocks") or 0))

    def columns(self, runs: list[dict]) -> list[tuple[Column, Callable[[dict], object]]]:
        """The trainable parameters, what each depth costs."""
        return [TRAINABLE]

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Accuracy and training time against the blocks trained."""
        rep.doc.figures([(rep.plot(self.key, plot_depth, runs),
                          f"Accuracy and training time against the blocks trained, {rep.setting(runs)}; dotted: "
                          "gradual unfreezing.")])

    def answer(self, rep: Report) -> list[str]:
        """Per model: the fewest blocks whose validation accuracy is within the noise of the best depth's, at
        what share of its training time, and the gradual run beside them."""
        out = []
        runs = rep.group(self.key)
        for model in sorted({model_name(r) for r in runs}):
            mine = [r for r in runs if model_name(r) == model]
            top = sorted((r for r in mine if is_num(r["vars"].get("blocks")) and is_num(metric(r, "best_val_acc"))),
                         key=lambda r: r["vars"]["blocks"])
            if len(top) < 2:
                continue
            best = max(top, key=best_val)
            enough = next(r for r in top if r is best or rep.spread.within(best_val(best) - best_val(r)))
            text = lambda r: (f"test {f_acc(metric(r, 'test_acc'))}, val {f_acc(metric(r, 'best_val_acc'))} in "  # noqa: E731
                              f"{f_time(train_time(r))}")
            line = (f"**Depth of fine-tuning** ({model}, {rep.setting(mine)}): the best depth on validation is "
                    f"{best['vars']['blocks']} block(s) ({text(best)})")
            if enough is not best:
                t, t_best = train_time(enough), train_time(best)
                share = f", {t / t_best:.0%} of its training time" if is_num(t) and is_num(t_best) and t_best else ""
                line += (f"; {enough['vars']['blocks']} block(s) are within the noise of it ({text(enough)}{share}), "
                         f"so adding blocks stops paying after {enough['vars']['blocks']}")
            else:
                line += "; no shallower depth comes within the noise of it"
            gradual = next((r for r in mine if r["vars"].get("strategy") == "gradual"), None)
            if gradual and is_num(metric(gradual, "test_acc")):
                line += f". Gradual unfreezing of the same blocks: {text(gradual)}"
            out.append(line + ".")
        return out


class Peft(Group):
    """Parameter-efficient fine-tuning: LoRA adapters and masked updates beside the head, BatchNorm and everything."""

    key = "peft"
    title = "Parameter-efficient fine-tuning"
    question = ("Do LoRA adapters or masked updates of a few percent of the parameters come close to full "
                "fine-tuning, and what do they cost in time and storage?")
    vars = ("model", "strategy")

    def order(self, runs: list[dict], names: list[str]) -> list[dict]:
        """Per model, from the fewest trainable parameters to the most."""
        return _by_trainable(runs)

    def columns(self, runs: list[dict]) -> list[tuple[Column, Callable[[dict], object]]]:
        """What each stores: the entries it trains (float32, what a task needs beside the shared pretrained
        weights) and its checkpoint file (the whole network and its optimizer state)."""
        return [TRAINABLE,
                (("trained MiB (fp32)", f_mib, "min"), lambda r: _mib(metric(r, "trainable_params"))),
                (("checkpoint MiB", f_mib, None), lambda r: metric(r, "checkpoint_mb"))]

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Bar chart of test accuracy per strategy."""
        rep.doc.figures([(rep.plot(self.key, plot_bars, runs, title="test accuracy, parameter-efficient or not"),
                          f"Test accuracy (training time on each bar), {rep.setting(runs)}.")])

    def answer(self, rep: Report) -> list[str]:
        """Per model: each parameter-efficient run against full fine-tuning, and the masked selections' ranking."""
        out = []
        runs = rep.group(self.key)
        for model in sorted({model_name(r) for r in runs}):
            mine = {mode_name(r): r for r in runs if model_name(r) == model}
            full = mine.get("full")
            cheap = [r for name, r in mine.items() if name == "lora" or name.startswith("masked")]
            if full is None or not cheap or not is_num(metric(full, "test_acc")):
                continue
            line = (f"**Parameter-efficient fine-tuning** ({model}, {rep.setting(list(mine.values()))}): full "
                    f"fine-tuning test {f_acc(metric(full, 'test_acc'))}; "
                    + "; ".join(_against(rep, r, full) for r in cheap))
            masked = [r for r in cheap if mode_name(r).startswith("masked")]
            if len(masked) > 1:
                line += f". Of the masked selections, {mode_name(max(masked, key=best_val))} is best on validation"
            out.append(line + ".")
        return out


def _against(rep: Report, r: dict, full: dict) -> str:
    """A run's test accuracy against full fine-tuning's, and its share of full's trainable parameters and time."""
    a, b = metric(r, "test_acc"), metric(full, "test_acc")
    return (f"{mode_name(r)} test {f_acc(a)} ({rep.spread.noisy(delta(a, b), a=a, b=b)} vs full) with "
            f"{_share(metric(r, 'trainable_params'), metric(full, 'trainable_params'))} of its trainable parameters "
            f"in {_share(train_time(r), train_time(full))} of its time")


def _mib(params) -> float | None:
    return params * 4 / 2**20 if is_num(params) else None


def _share(a, b) -> str:
    return f"{a / b:.0%}" if is_num(a) and is_num(b) and b else "n/a"


class TransferLr(Group):
    """The learning rate of the chosen transfer model and mode."""

    key = "transfer_lr"
    title = "Transfer learning: learning rate"
    question = "How sensitive is the chosen transfer model and mode to its learning rate?"
    vars = ("model", "strategy", "lr")

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Accuracy against learning rate."""
        rep.doc.figures([(rep.plot(self.key, plot_lines, _series(runs, "lr", ("model", "strategy")),
                                   xlabel="learning rate (log scale)", title="accuracy vs learning rate"),
                          f"Accuracy vs learning rate, {rep.setting(runs)}.")])

    def answer(self, rep: Report) -> list[str]:
        """Best and worst learning rate per model and strategy."""
        return _lr_answers(rep, rep.group(self.key), ("model", "strategy"))


class Fractions(Group):
    """Accuracy with a share of the training images."""

    key = "fractions"
    title = "Training-data fractions"
    question = "How much training data does each approach need?"
    vars = ("model", "fraction")

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Accuracy against training-data fraction, one line per model."""
        rep.doc.figures([(rep.plot(self.key, plot_lines, _series(runs, "fraction", ("model",)),
                                   xlabel="share of the training images (log scale)",
                                   title="accuracy vs training-data fraction", xfmt=lambda f: var_text("fraction", f)),
                          f"Accuracy vs share of training data, {rep.setting(runs)}.")])

    def answer(self, rep: Report) -> list[str]:
        """Accuracy at the smallest data fraction as a share of the largest, per model."""
        frac = rep.group(self.key)
        parts = []
        for model in sorted({model_name(r) for r in frac}):
            rs = sorted((r for r in frac if model_name(r) == model), key=lambda r: r["vars"].get("fraction") or 0)
            small, full = rs[0], rs[-1]
            a, b = metric(small, "test_acc"), metric(full, "test_acc")
            if len(rs) > 1 and is_num(a) and is_num(b) and b > 0:
                lo, hi = (var_text("fraction", r["vars"].get("fraction")) for r in (small, full))
                parts.append(f"{model} keeps {a / b:.0%} of its test acc with {lo} of the training images "
                             f"({f_acc(a)} vs {f_acc(b)} at {hi})")
        return [f"**Data fractions** ({rep.setting(frac)}): " + "; ".join(parts) + "."] if parts else []


class Semi(Group):
    """Semi-supervised learning: pseudo-labels against the labelled images alone, over the share of labels kept."""

    key = "semi"
    title = "Semi-supervised learning with few labels"
    question = ("With only a few labels, how much do pseudo-labels of the unlabelled training images add, against "
                "training on the labelled images alone and against all labels?")
    vars = ("model", "labelled_fraction", "labels")

    def columns(self, runs: list[dict]) -> list[tuple[Column, Callable[[dict], object]]]:
        """The labelled images, and in the last epoch the share of unlabelled images with a pseudo-label and how
        many of those were right (scored against the withheld labels)."""
        return [(("labelled images", f_int, None), lambda r: metric(r, "semi_labelled_images")),
                (("pseudo-labelled (last epoch)", f_acc, None), lambda r: _last_epoch(r, "pseudo_coverage")),
                (("pseudo-labels right", f_acc, None), lambda r: _last_epoch(r, "pseudo_accuracy"))]

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Accuracy against the labelled fraction: one curve with pseudo-labels, one without; all labels at 100%."""
        rep.doc.figures([(rep.plot(self.key, plot_lines, _series(runs, "labelled_fraction", ("labels",)),
                                   xlabel="share of the training labels kept (log scale)",
                                   title="accuracy vs labelled fraction",
                                   xfmt=lambda f: var_text("labelled_fraction", f)),
                          f"Accuracy against the share of labels kept, {rep.setting(runs)}.")])

    def answer(self, rep: Report) -> list[str]:
        """Per labelled fraction: pseudo-labels against the labelled images alone, and the gap to all labels."""
        runs = rep.group(self.key)
        by = {(r["vars"].get("labels"), r["vars"].get("labelled_fraction")): r for r in runs}
        every = by.get(("all labels", 1.0))
        parts = []
        for f in sorted({f for kind, f in by if kind == "pseudo-labels"}):
            semi, alone = by[("pseudo-labels", f)], by.get(("labelled only", f))
            a = metric(semi, "test_acc")
            if alone is None or not is_num(a):
                continue
            b = metric(alone, "test_acc")
            part = (f"with {var_text('labelled_fraction', f)} of the labels, pseudo-labels reach test {f_acc(a)} "
                    f"against {f_acc(b)} on the labelled images alone ({rep.spread.noisy(delta(a, b), a=a, b=b)})")
            if every is not None and is_num(metric(every, "test_acc")):
                c = metric(every, "test_acc")
                part += f", {rep.spread.noisy(delta(a, c), a=a, b=c)} against all labels"
            parts.append(part)
        return [f"**Semi-supervised learning** ({rep.setting(runs)}): " + "; ".join(parts) + "."] if parts else []


def _last_epoch(r: dict, key: str):
    """A field of the run's last history row (semi-supervised runs record their pseudo-labels there), or None."""
    history = metric(r, "history") or [{}]
    return history[-1].get(key)


def _baseline(runs: list[dict]) -> dict | None:
    """The regularization group's reference run (option "baseline"), if it finished."""
    return next((r for r in runs if r["vars"].get("option") == "baseline"), None)


class Regularization(Group):
    """Regularization and augmentation options against one baseline run."""

    key = "regularization"
    title = "Regularization and augmentation"
    question = "Do label smoothing, MixUp, CutMix, RandAugment or TrivialAugment help on this data?"
    vars = ("option",)

    def columns(self, runs: list[dict]) -> list[tuple[Column, Callable[[dict], object]]]:
        """Each option's change in accuracy against the baseline."""
        base = _baseline(runs)
        if not base:
            return []
        return [(("Δ val vs baseline", f_pp, "max"), lambda r: delta(best_val(r), best_val(base))),
                (("Δ test vs baseline", f_pp, "max"), lambda r: delta(metric(r, "test_acc"), metric(base, "test_acc")))]

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Change in accuracy of each option against the baseline run."""
        base = _baseline(runs)
        if not base:
            return
        rs = [r for r in runs if r is not base]
        opts = [str(r["vars"].get("option")) for r in rs]

        def pp(d: float | None) -> float | None:
            return d * 100 if is_num(d) else None

        series = {"Δ test acc": [pp(delta(metric(r, "test_acc"), metric(base, "test_acc"))) for r in rs],
                  "Δ best val acc": [pp(delta(best_val(r), best_val(base))) for r in rs]}
        noise = rep.spread.noise * 100
        img = rep.plot(self.key, plot_grouped, opts, series, ylabel="change vs baseline (pp)",
                       title="regularization options vs baseline", band=noise, horizontal=True)
        rep.doc.figures([(img, f"Change in accuracy vs the baseline run; grey band: within noise "
                               f"(±{noise:.1f} pp), {rep.setting(runs)}.")])

    def answer(self, rep: Report) -> list[str]:
        """Which options helped, hurt or stayed within noise against the baseline run."""
        reg = rep.group(self.key)
        base = _baseline(reg)
        if not base:
            return []
        verdicts: dict[str, list[str]] = {"helped": [], "within seed spread": [], "within noise": [], "hurt": []}
        for r in reg:
            if r is base:
                continue
            dt, dv = delta(metric(r, "test_acc"), metric(base, "test_acc")), delta(best_val(r), best_val(base))
            flag = rep.spread.within(dt, metric(r, "test_acc"), metric(base, "test_acc")) if is_num(dt) else (
                "within noise")
            kind = flag.split(",")[0] if flag else "helped" if dt > 0 else "hurt"
            verdicts[kind].append(f"{r['vars'].get('option')} ({f_pp(dt)} test, {f_pp(dv)} val"
                                  + (f"; {flag.split(', ', 1)[1]}" if kind == "within seed spread" else "") + ")")
        return [f"**Regularization** (vs baseline test {f_acc(metric(base, 'test_acc'))}, {rep.setting(reg)}): "
                + "; ".join(f"{k}: {', '.join(v)}" for k, v in verdicts.items() if v) + "."]


def _macro_recall(r: dict):
    """Test macro recall from eval.json, or None."""
    return ((r.get("eval") or {}).get("macro") or {}).get("recall")


class Imbalance(Group):
    """A long-tailed training set and the remedies against it."""

    key = "imbalance"
    title = "Class imbalance"
    question = ("What does a long-tailed training set do to per-class recall, and do weighted cross-entropy or "
                "oversampling repair it?")
    vars = ("ratio", "remedy")

    @staticmethod
    def name(r: dict, runs: list[dict]) -> str:
        """A run's column name: the remedy, with the ratio when there are several."""
        several = len({str(x["vars"].get("ratio")) for x in runs}) > 1
        return (f"ratio {f_g(r['vars'].get('ratio'))}, " if several else "") + str(r["vars"].get("remedy"))

    def columns(self, runs: list[dict]) -> list[tuple[Column, Callable[[dict], object]]]:
        """Macro and worst-class recall: what imbalance costs."""
        return [(("macro recall", f_acc, "max"), _macro_recall),
                (("worst-class recall", f_acc, "max"), lambda r: min(recalls(r).values(), default=None))]

    def figure(self, rep: Report, runs: list[dict]) -> None:
        """Per-class recall table (classes x remedies) and grouped bars."""
        runs = [r for r in runs if recalls(r)]
        if not runs:
            return
        classes = list(dict.fromkeys(c for r in runs for c in recalls(r)))
        names = [self.name(r, runs) for r in runs]
        rep.doc.para("Test recall per class:")
        rep.doc.table([("class", str, None)] + [(n, f_acc, None) for n in names],
                      [[c] + [recalls(r).get(c) for r in runs] for c in classes])
        series = {n: [recalls(r).get(c) for c in classes] for n, r in zip(names, runs)}
        rep.doc.figures([(rep.plot(self.key, plot_grouped, classes, series, ylabel="test recall",
                                   title="per-class recall by remedy"),
                          f"Per-class test recall, {rep.setting(runs)}.")])

    def answer(self, rep: Report) -> list[str]:
        """Macro and worst-class recall per remedy, and the best remedy per imbalance ratio."""
        imb = [r for r in rep.group(self.key) if recalls(r)]
        if not imb:
            return []
        parts = []
        for r in imb:
            rec = recalls(r)
            worst = min(rec, key=rec.get)
            parts.append(f"{self.name(r, imb)}: macro recall {f_acc(_macro_recall(r))}, worst class {worst} "
                         f"{rec[worst]:.4f}")
        for ratio in sorted({r["vars"].get("ratio") for r in imb}, key=sortkey):
            same = [r for r in imb if r["vars"].get("ratio") == ratio]
            if len(same) > 1:  # remedies compete only at the same imbalance
                top = max(same, key=lambda r: min(recalls(r).values()))
                parts.append(f"highest worst-class recall at ratio {f_g(ratio)}: {top['vars'].get('remedy')}")
        return [f"**Imbalance** ({rep.setting(imb)}): " + "; ".join(parts) + "."]


def _by_source(r: dict) -> dict:
    """The run's test accuracy per image source: evaluate.py's, else the run's own final test's."""
    return (r.get("eval") or {}).get("by_source") or metric(r, "test_by_source") or {}


def _gap(r: dict) -> dict | None:
    return (r.get("eval") or {}).get("source_gap") or metric(r, "test_source_gap")


class Sources(Section):
    """Test accuracy per image source (sources.csv beside the data): how much of it carries to new photos."""

    key = "sources"
    title = "Accuracy by image source"
    question = ("Does the test accuracy carry to the real Animals-10 photos, or do the models fit the other photo "
                "sets the training classes come from?")

    def render(self, rep: Report, spec: dict) -> None:
        """One row per run: accuracy on each source's test images, and the gap between the reference and the rest."""
        runs = [r for r in rep.done if _by_source(r)]
        if not runs:
            return
        sources = list(dict.fromkeys(src for r in runs for src in _by_source(r)))
        reference = next((g["reference"] for g in map(_gap, runs) if g), None)
        sources.sort(key=lambda src: src != reference)  # the reference first
        d = rep.doc
        d.heading(2, self.title)
        d.para(f"**Question:** {self.question}")
        counts = ", ".join(f"{src} {f_int(_by_source(runs[0]).get(src, {}).get('n'))}" for src in sources)
        d.para(f"Test images per source: {counts}. The gap is the {reference or 'reference'} photos' accuracy "
               "minus the other sources' (± one standard error of that difference of two proportions), "
               f"{rep.setting(runs)}.")
        d.table([("run", str, None), ("test acc", f_acc, "max")]
                + [(src, f_acc, "max") for src in sources] + [("gap", str, None)],
                [[r["label"], metric(r, "test_acc")] + [_by_source(r).get(src, {}).get("accuracy") for src in sources]
                 + [gap_text(g) if (g := _gap(r)) else DASH] for r in runs])

    def answer(self, rep: Report) -> list[str]:
        """The gap of the best scratch and the best transfer run."""
        out = []
        for kind, rs in (("transfer", [r for r in rep.done if arch_key(r) != "scratch_cnn"]),
                         ("from scratch", [r for r in rep.done if arch_key(r) == "scratch_cnn"])):
            r = next((r for r in rs if _gap(r)), None)
            if r:
                g = _gap(r)
                out.append(f"**Image sources** (best {kind}, {r['label']}): {g['reference']} photos "
                           f"{f_acc(g['reference_acc'])} ({g['reference_n']} test images) against "
                           f"{f_acc(g['other_acc'])} on the other photo sets, {gap_text(g)}.")
        return out


class Ensemble(Section):
    """The final models' mean class probabilities against each of them (evaluate.py --ensemble; not a plan group)."""

    key = "ensemble"
    title = "Ensemble of the final models"
    question = ("Does averaging the final models' class probabilities beat the best of them, on the test split and "
                "on the real Animals-10 photos?")

    def render(self, rep: Report, spec: dict) -> None:
        """One row per member and one for the ensemble: test accuracy, and by source where the data says."""
        e = rep.study.get("ensemble")
        if not e:
            return
        d = rep.doc
        d.heading(2, self.title)
        d.para(f"**Question:** {self.question}")
        d.para(f"The mean of the class probabilities of the best run of each architecture on the {f_int(e.get('n'))} "
               "test images" + (" (each image and its mirror image)" if e.get("tta") else "") + ".")
        rows = [(f"{m['arch']}/{m['mode']}", m) for m in e["members"]] + [("ensemble", e["ensemble"])]
        gap = lambda m: m.get("source_gap") or {}  # noqa: E731
        d.table([("model", str, None), ("test acc", f_acc, "max"), ("Animals-10 photos", f_acc, "max"),
                 ("other photo sets", f_acc, "max"), ("gap", str, None)],
                [[name, m["accuracy"], gap(m).get("reference_acc"), gap(m).get("other_acc"),
                  gap_text(gap(m)) if gap(m) else DASH] for name, m in rows])

    def answer(self, rep: Report) -> list[str]:
        """The ensemble against its best member."""
        e = rep.study.get("ensemble")
        if not e:
            return []
        best = max(e["members"], key=lambda m: m["accuracy"])
        line = (f"**Ensemble** of {len(e['members'])} final models: test {f_acc(e['ensemble']['accuracy'])} against "
                f"{f_acc(best['accuracy'])} for its best member ({best['arch']}/{best['mode']}), "
                f"{rep.spread.noisy(delta(e['ensemble']['accuracy'], best['accuracy']))}")
        g, gb = e["ensemble"].get("source_gap"), best.get("source_gap")
        if g and gb:
            line += (f"; on the {g['reference']} photos {f_acc(g['reference_acc'])} against "
                     f"{f_acc(gb['reference_acc'])}")
        return [line + "."]


class Robustness(Section):
    """Corrupted test images and out-of-distribution detection, for the runs the runner tested (not a plan group)."""

    key = "robustness"
    title = "Robustness and out-of-distribution detection"

    def render(self, rep: Report, spec: dict) -> None:
        """Corruption tables and plots, and the OOD table and histograms."""
        cor = [r for r in rep.done if r.get("corruptions")]
        ood = [r for r in rep.done if r.get("ood")]
        if not cor and not ood:
            return
        rep.doc.heading(2, self.title)
        if cor:
            self.corruptions(rep, cor)
        if ood:
            rep.doc.heading(3, "Out-of-distribution detection")
            rep.doc.table([("run", str, None), ("OOD source", str, None), ("score", str, None), ("n in", f_int, None),
                           ("n out", f_int, None), ("AUROC", f_acc, "max"), ("FPR at 95% TPR", f_acc, "min"),
                           ("mean MSP in", f_acc, None), ("mean MSP out", f_acc, None)],
                          [[r["label"]] + [r["ood"].get(k) for k in ("ood_source", "score", "n_in", "n_out", "auroc",
                                                                     "fpr_at_95_tpr", "msp_in_mean", "msp_out_mean")]
                           for r in ood])
            rep.doc.figures([(rep.copy(r, "ood_hist"), f"Score histograms, {r['label']}.") for r in ood], cols=2)

    @staticmethod
    def corruptions(rep: Report, cor: list[dict]) -> None:
        """Mean accuracy against severity for all runs, then each run's accuracy per corruption and severity."""
        d, c0 = rep.doc, cor[0]["corruptions"]
        d.para(f"Accuracy on corrupted copies of {c0.get('n', '?')} test images (seed {c0.get('seed', '?')}), "
               f"severities {', '.join(map(str, c0.get('severities') or []))}.")
        d.figures([(rep.plot("corruptions_mean", plot_severity, cor),
                    f"Mean accuracy over corruptions vs severity, {rep.setting(cor)}.")])
        for r in cor:
            c = r["corruptions"]
            sev = list(c.get("severities") or [])
            d.heading(3, f"Corruptions: {r['label']}")
            d.para(f"Clean {f_acc(c.get('clean_acc'))}, mean corrupted {f_acc(c.get('mean_corrupted_acc'))}, "
                   f"{rep.setting([r])} (evaluated on {c.get('device', '?')} in {f_time(c.get('seconds'))}).")
            d.table([("corruption", str, None)] + [(f"severity {s}", f_acc, "max") for s in sev]
                    + [("mean", f_acc, "max")],
                    [[k] + list(v) + [sum(v) / len(v) if v else None] for k, v in (c.get("accuracy") or {}).items()])
            d.figures([(rep.copy(r, "corruptions"), f"Corrupted examples and accuracy, {r['label']}.")])

    def answer(self, rep: Report) -> list[str]:
        """The most harmful corruption and the OOD AUROC, per run that has them."""
        out = []
        for r in (r for r in rep.done if r.get("corruptions")):
            c = r["corruptions"]
            acc = {k: sum(v) / len(v) for k, v in (c.get("accuracy") or {}).items() if v}
            if acc:
                worst = min(acc, key=acc.get)
                out.append(f"**Robustness** ({r['label']}, clean {f_acc(c.get('clean_acc'))}): {worst} hurts most "
                           f"(mean {acc[worst]:.4f} over severities); mean corrupted acc "
                           f"{f_acc(c.get('mean_corrupted_acc'))}, "
                           f"{f_pp(delta(c.get('mean_corrupted_acc'), c.get('clean_acc')))} vs clean.")
        for r in (r for r in rep.done if r.get("ood")):
            o = r["ood"]
            out.append(f"**Out-of-distribution** ({r['label']}, {o.get('score', 'score')} on "
                       f"{o.get('ood_source', '?')}): AUROC {f_acc(o.get('auroc'))}, "
                       f"FPR at 95% TPR {f_acc(o.get('fpr_at_95_tpr'))}.")
        return out


class Compression(Section):
    """int8 quantization and magnitude pruning of the tested transfer run, for CPU inference (not a plan group)."""

    key = "compression"
    title = "Compression for CPU inference"
    question = ("How much smaller and faster on a CPU does the model get with int8 quantization or pruning, and "
                "what does it cost in accuracy?")

    def render(self, rep: Report, spec: dict) -> None:
        """Per compressed run: its compression.json table (sizes, CPU img/s at batch 1 and 32, test accuracy)."""
        runs = [r for r in rep.done if r.get("compression")]
        if not runs:
            return
        rep.doc.heading(2, self.title)
        rep.doc.para(f"**Question:** {self.question}")
        for r in runs:
            c = r["compression"]
            m = c.get("machine") or {}
            rep.doc.para(f"{r['label']} ({c.get('model', '?')}, {rep.setting([r])}): timed on {m.get('cpu', '?')} "
                         f"with {m.get('threads', '?')} torch thread(s); test accuracy on "
                         f"{c['rows'][0].get('test_n', '?')} test images.")
            rep.doc.table([("model", str, None), ("file MiB", f_mib, "min"), ("gzip MiB", f_mib, "min"),
                           ("nonzero weights", f_acc, None), ("img/s batch 1", f_rate, "max"),
                           ("img/s batch 32", f_rate, "max"), ("x b1", _times, None), ("x b32", _times, None),
                           ("test acc", f_acc, "max")],
                          [[row["name"], row.get("mib"), row.get("gzip_mib"), row.get("nonzero"), row.get("img_s_b1"),
                            row.get("img_s_b32"), row.get("speedup_b1"), row.get("speedup_b32"), row.get("test_acc")]
                           for row in c["rows"]])
            rep.doc.bullets(c.get("notes") or [])

    def answer(self, rep: Report) -> list[str]:
        """Per compressed run: each compressed model's size, speed and accuracy against the float one."""
        out = []
        for r in (r for r in rep.done if r.get("compression")):
            rows = r["compression"]["rows"]
            base = rows[0]
            parts = [_compressed(rep, row, base) for row in rows[1:]]
            if parts:
                out.append(f"**Compression** ({r['label']}, float test {f_acc(base.get('test_acc'))}): "
                           + "; ".join(parts) + ".")
        return out


def _compressed(rep: Report, row: dict, base: dict) -> str:
    """One compressed model against the float one: its share of the file, its speed-ups and its test accuracy."""
    a, b = row.get("test_acc"), base.get("test_acc")
    return (f"{row['name']} {_share(row.get('mib'), base.get('mib'))} of the file "
            f"({_share(row.get('gzip_mib'), base.get('gzip_mib'))} gzipped), {_times(row.get('speedup_b1'))} / "
            f"{_times(row.get('speedup_b32'))} the img/s at batch 1 / 32, test {f_acc(a)} "
            f"({rep.spread.noisy(delta(a, b), a=a, b=b)})")


def _times(x) -> str:
    return f"{x:.2f}x" if is_num(x) else "n/a"


class Faithfulness(Section):
    """Whether to believe the explanations, for the runs gradcam.py scored (not a plan group): each method's
    deletion and insertion AUC, and how its maps change under cascading model randomisation."""

    key = "faithfulness"
    title = "Faithfulness and sanity of the explanations"

    def render(self, rep: Report, spec: dict) -> None:
        """Per scored run: the AUC table (mean ± std), then the randomisation table."""
        runs = [r for r in rep.done if (r.get("faithfulness") or {}).get("methods") or r.get("sanity")
                or r.get("layers")]
        if not runs:
            return
        d = rep.doc
        d.heading(2, self.title)
        d.para("Pixels are deleted (set to the mean) or inserted (into a blurred copy) in the order of each "
               "method's map for the predicted class, most important first, and the class probability followed "
               "(`gradcam.py --faithfulness`). A faithful map makes it fall fast when deleting (a low AUC) and rise "
               "fast when inserting (a high one); the random order is the bar every method must clear.")
        for r in runs:
            f = r.get("faithfulness") or {}
            d.heading(3, f"Faithfulness: {r['label']}")
            if f.get("methods"):
                d.para(f"{f.get('n', '?')} test images drawn with seed {f.get('seed', '?')}; integrated gradients "
                       f"with {f.get('ig_steps', '?')} steps; {rep.setting([r])}.")
                d.table([("method", str, None), ("deletion AUC", f_acc, "min"), ("± std", f_acc, None),
                         ("insertion AUC", f_acc, "max"), ("± std", f_acc, None)],
                        [[k, v.get("deletion_mean"), v.get("deletion_std"), v.get("insertion_mean"),
                          v.get("insertion_std")] for k, v in f["methods"].items()])
            self.sanity(rep, r)
            self.data_randomization(rep, r)
            self.layers(rep, r)

    @staticmethod
    def data_randomization(rep: Report, r: dict) -> None:
        """The shuffled-label head test of one run: its scope, how well the head fitted, and the correlations."""
        s = (r.get("sanity") or {}).get("data_randomization") or {}
        if not s.get("methods"):
            return
        scope = ("the run trained its head alone, so this is the whole test" if s.get("head_only") else
                 "the layers below the head keep their trained weights, so it tests the head only")
        rep.doc.para(f"**Data randomisation**: the head refitted for {s.get('epochs', '?')} epochs to "
                     f"{s.get('train_images', '?')} training images with shuffled labels (its accuracy on them "
                     f"{f_acc(s.get('fit_acc'))}); {scope}. Rank correlation of each method's map with the "
                     "trained model's, for the same classes; flagged at the same threshold"
                     + (f": **{', '.join(s['flagged'])}**." if s.get("flagged") else "; none is."))
        rep.doc.table([("method", str, None), ("rank correlation", f_acc, None), ("± std", f_acc, None)],
                      [[k, v["mean"], v["std"]] for k, v in s["methods"].items()])

    @staticmethod
    def layers(rep: Report, r: dict) -> None:
        """Grad-CAM on the network's last feature map against a finer one: agreement and faithfulness."""
        s = r.get("layers") or {}
        if not s.get("scores"):
            return
        first, second = s["layers"]
        rep.doc.para(f"**Grad-CAM on two layers** (`{first}` and `{second}`, the {s.get('n', '?')} explained test "
                     f"images): rank correlation {f_acc(s['rank_correlation']['mean'])} ± "
                     f"{f_acc(s['rank_correlation']['std'])}. Its Grad-CAM grid in the per-model detail shows both.")
        rep.doc.table([("layer", str, None), ("map size", str, None), ("deletion AUC", f_acc, "min"),
                       ("insertion AUC", f_acc, "max")],
                      [[k, " x ".join(map(str, v["size"])), v["deletion_mean"], v["insertion_mean"]]
                       for k, v in s["scores"].items()])

    @staticmethod
    def sanity(rep: Report, r: dict) -> None:
        """The cascading randomisation table of one run, and what it flags."""
        s = r.get("sanity") or {}
        rows = s.get("cascade") or []
        if not rows:
            return
        methods = [k for k in rows[0] if k != "randomized"]
        rep.doc.para(f"**Sanity check** (Adebayo et al., 2018): weights re-initialised from the head down, "
                     f"cumulatively; Spearman rank correlation of each method's map with the trained model's on "
                     f"{s.get('n', '?')} test images (mean). A method still at {s.get('threshold', '?')} or more "
                     "with every weight random is flagged"
                     + (f": **{', '.join(s['flagged'])}**." if s.get("flagged") else "; none is."))
        rep.doc.table([("randomised up to", str, None)] + [(k, f_acc, None) for k in methods],
                      [[row["randomized"]] + [row[k]["mean"] for k in methods] for row in rows])

    def answer(self, rep: Report) -> list[str]:
        """Per scored run: the most faithful method by each curve, and the methods no better than random."""
        out = []
        for r in (r for r in rep.done if (r.get("faithfulness") or {}).get("methods")):
            m = r["faithfulness"]["methods"]
            real = {k: v for k, v in m.items() if k != "random"}
            if not real:
                continue
            best_del = min(real, key=lambda k: real[k]["deletion_mean"])
            best_ins = max(real, key=lambda k: real[k]["insertion_mean"])
            line = (f"**Faithfulness** ({r['label']}, {r['faithfulness'].get('n', '?')} test images): most faithful "
                    f"by deletion {best_del} (AUC {f_acc(real[best_del]['deletion_mean'])}), by insertion "
                    f"{best_ins} (AUC {f_acc(real[best_ins]['insertion_mean'])})")
            rand = m.get("random")
            if rand:
                # within one standard error of the random order's mean: not shown to beat it
                n = max(r["faithfulness"].get("n", 1), 1)
                weak = [k for k, v in real.items() for kind, better in (("deletion", -1), ("insertion", 1))
                        if better * (v[f"{kind}_mean"] - rand[f"{kind}_mean"]) <= rand[f"{kind}_std"] / n ** 0.5]
                line += (f"; random order: deletion {f_acc(rand['deletion_mean'])}, insertion "
                         f"{f_acc(rand['insertion_mean'])}")
                if weak:
                    line += f"; no better than random on at least one curve: {', '.join(dict.fromkeys(weak))}"
            sanity = r.get("sanity") or {}
            if sanity.get("flagged"):
                line += f"; its maps barely change with random weights (sanity check): {', '.join(sanity['flagged'])}"
            shuffled = (sanity.get("data_randomization") or {}).get("flagged")
            if shuffled:
                line += f"; nor when the head learnt shuffled labels: {', '.join(shuffled)}"
            out.append(line + "." + self.layer_answer(r.get("layers") or {}))
        return out

    @staticmethod
    def layer_answer(s: dict) -> str:
        """Which of the two Grad-CAM layers' maps is the more faithful by each curve, and how alike they are."""
        scores = s.get("scores") or {}
        if len(scores) != 2:
            return ""
        by_del = min(scores, key=lambda k: scores[k]["deletion_mean"])
        by_ins = max(scores, key=lambda k: scores[k]["insertion_mean"])
        verdict = (f"`{by_del}` is the more faithful by both curves" if by_del == by_ins else
                   f"`{by_del}` by deletion, `{by_ins}` by insertion")
        return (f" Grad-CAM on `{s['layers'][0]}` and `{s['layers'][1]}`: rank correlation "
                f"{f_acc(s['rank_correlation']['mean'])}; {verdict}.")


SECTIONS: dict[str, Section] = {s.key: s for s in (ScratchGrid(), Strategies(), Depth(), Peft(), TransferLr(),
                                                     Fractions(), Semi(),
                                                     Regularization(), Imbalance(), Sources(), Ensemble(),
                                                     Robustness(), Compression(), Faithfulness())}
GROUPS = {key: s.spec() for key, s in SECTIONS.items() if isinstance(s, Group)}  # a plan's "groups", in this order
# The summary answers the transfer questions first: the learning-rate sentences of the transfer model come before
# the scratch grid's, whose section comes first in the report.
SUMMARY_ORDER = ("strategies", "depth", "peft", "transfer_lr", "scratch_grid", "fractions", "semi", "regularization",
                 "imbalance", "sources", "ensemble", "robustness", "compression", "faithfulness")


def section_for(key: str) -> Section:
    """The registry's section for a study group, or a plain runs table for a group it does not know."""
    return SECTIONS.get(key) or Group(key)
