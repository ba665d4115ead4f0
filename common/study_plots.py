"""The study report's own figures: accuracy vs time, validation curves, the lr x batch heatmap, bars and lines."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from common.formatting import DASH, f_g, f_time, is_num  # noqa: E402
from common.plots import save_figure  # noqa: E402
from common.study_runs import best_val, metric, mode_name, model_name, train_time  # noqa: E402


def model_colors(runs: list[dict]) -> dict[str, str]:
    """One matplotlib colour per model, the same in every figure."""
    return {m: f"C{i}" for i, m in enumerate(sorted({model_name(r) for r in runs}))}


def plot_scatter(runs: list[dict], numbers: dict[str, int], path: Path) -> None:
    """Test accuracy against training time (log x), each point labelled with its number in the runs table."""
    pts = [(max(train_time(r), 1e-2), metric(r, "test_acc"), r) for r in runs
           if is_num(train_time(r)) and is_num(metric(r, "test_acc"))]
    colors = model_colors(runs)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    ax.set_xscale("log")
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[colors[model_name(p[2])] for p in pts], s=30, zorder=3)
    fig.canvas.draw()  # fixes the axes transform, so labels can be placed in pixels
    placed: list[tuple[float, float]] = []
    for t, acc, r in sorted(pts, key=lambda p: numbers[p[2]["name"]]):
        x, y = ax.transData.transform((t, acc))
        # first offset whose label does not sit on an earlier one (clusters of similar runs are common)
        dx, dy = next(((dx, dy) for dx, dy in ((5, 2), (5, -11), (-16, 2), (-16, -11), (5, 12), (-16, 12))
                       if all(abs(x + dx - px) > 14 or abs(y + dy - py) > 9 for px, py in placed)), (5, 2))
        placed.append((x + dx, y + dy))
        ax.annotate(str(numbers[r["name"]]), (t, acc), xytext=(dx, dy), textcoords="offset pixels", fontsize=7)
    ax.set(xlabel="training time (s, log scale)", ylabel="test accuracy",
           title="test accuracy vs training time (numbers: # in the runs table)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=[plt.Line2D([], [], marker="o", ls="", color=c, label=m) for m, c in colors.items()],
              fontsize=8, loc="lower right")
    save_figure(fig, path)


def plot_val_curves(runs: list[dict], numbers: dict[str, int], path: Path, top: int = 8) -> None:
    """Validation accuracy per epoch, one line per run; the best `top` in colour, the rest grey."""
    ranked = sorted(runs, key=best_val, reverse=True)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, r in enumerate(ranked):
        hist = metric(r, "history") or []
        xs, ys = [h.get("epoch") for h in hist], [h.get("val_acc") for h in hist]
        if i < top:
            ax.plot(xs, ys, marker=".", label=f"{numbers[r['name']]} {r['label']}", zorder=3)
        else:
            ax.plot(xs, ys, color="0.75", lw=0.8, label="other runs" if i == top else None)
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
              title=f"best {top} by val acc" if len(ranked) > top else None)
    save_figure(fig, path)


def plot_heatmap(grid: list[list], rows: list, cols: list, path: Path, title: str) -> None:
    """Best val acc on an lr x batch-size grid, values written in the cells."""
    data = [[v if is_num(v) else math.nan for v in row] for row in grid]
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2.2, 0.55 * len(rows) + 1.4))
    im = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [f_g(c) for c in cols])
    ax.set_yticks(range(len(rows)), [f_g(r) for r in rows])
    ax.set(xlabel="batch size", ylabel="learning rate", title=title)
    vals = [v for row in data for v in row if not math.isnan(v)]
    hi, mid = max(vals, default=0), (max(vals, default=0) + min(vals, default=0)) / 2
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, DASH if math.isnan(v) else f"{v:.4f}", ha="center", va="center", fontsize=8,
                    color="black" if v > mid else "white", fontweight="bold" if v == hi else None)
    fig.colorbar(im, ax=ax, fraction=0.05)
    save_figure(fig, path)


def plot_bars(runs: list[dict], path: Path, title: str) -> None:
    """Test accuracy per run as bars, training time written on each."""
    colors = model_colors(runs)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(runs) + 1.5), 4))
    accs = [metric(r, "test_acc") if is_num(metric(r, "test_acc")) else 0 for r in runs]
    bars = ax.bar(range(len(runs)), accs, color=[colors[model_name(r)] for r in runs])
    ax.bar_label(bars, [f"{a:.4f}\n{f_time(train_time(r))}" for a, r in zip(accs, runs)], fontsize=8, padding=2)
    ax.set_xticks(range(len(runs)), [f"{model_name(r)}\n{mode_name(r)}" for r in runs], fontsize=8)
    ax.set(ylim=(0, 1.15), ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def plot_lines(series: dict[str, list[tuple[float, float, float]]], path: Path, xlabel: str, title: str,
                xfmt: Callable = f_g) -> None:
    """Test (solid) and best val (dashed) accuracy against a log-scaled x, one colour per series."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    xs_all = sorted({x for pts in series.values() for x, _, _ in pts})
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i}", label=f"{name} test")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker=".", ls="--", color=f"C{i}", alpha=0.6,
                label=f"{name} best val")
    ax.set_xscale("log")
    ax.set_xticks(xs_all, [xfmt(x) for x in xs_all])
    ax.minorticks_off()
    ax.set(xlabel=xlabel, ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, path)


def plot_depth(runs: list[dict], path: Path) -> None:
    """Accuracy (test solid, best val dashed) and training time against the blocks trained (top mode), one colour
    per model; a model's gradual-unfreezing run is a dotted line across both panels."""
    fig, (acc, secs) = plt.subplots(1, 2, figsize=(10, 4))
    for i, model in enumerate(sorted({model_name(r) for r in runs})):
        mine = [r for r in runs if model_name(r) == model]
        top = sorted((r for r in mine if is_num(r["vars"].get("blocks"))), key=lambda r: r["vars"]["blocks"])
        xs = [r["vars"]["blocks"] for r in top]
        acc.plot(xs, [metric(r, "test_acc") for r in top], marker="o", color=f"C{i}", label=f"{model} test")
        acc.plot(xs, [metric(r, "best_val_acc") for r in top], marker=".", ls="--", color=f"C{i}", alpha=0.6,
                 label=f"{model} best val")
        secs.plot(xs, [train_time(r) for r in top], marker="o", color=f"C{i}", label=model)
        for r in (r for r in mine if r["vars"].get("strategy") == "gradual"):
            if is_num(metric(r, "test_acc")):
                acc.axhline(metric(r, "test_acc"), ls=":", color=f"C{i}", label=f"{model} gradual, test")
            if is_num(train_time(r)):
                secs.axhline(train_time(r), ls=":", color=f"C{i}", label=f"{model} gradual")
    for ax, ylabel in ((acc, "accuracy"), (secs, "training time (s)")):
        ax.set(xlabel="blocks below the head that train (top mode)", ylabel=ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    acc.set_title("accuracy vs depth of fine-tuning")
    secs.set_title("training time vs depth")
    secs.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    acc.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def plot_grouped(groups: list[str], series: dict[str, list], path: Path, ylabel: str, title: str,
                  band: float = 0.0, horizontal: bool = False) -> None:
    """Grouped bars (one bar per series within each group); band shades +-band around zero as noise."""
    n = max(1, len(series))
    width = 0.8 / n
    size = (7.5, 0.35 * len(groups) * n + 1.3) if horizontal else (max(7.5, 0.25 * len(groups) * n + 2.5), 4)
    fig, ax = plt.subplots(figsize=size)
    for i, (name, vals) in enumerate(series.items()):
        pos = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        vals = [v if is_num(v) else 0 for v in vals]
        (ax.barh if horizontal else ax.bar)(pos, vals, width, label=name, color=f"C{i}", zorder=2)
    ticks = (ax.set_yticks if horizontal else ax.set_xticks)
    ticks(range(len(groups)), groups, **({} if horizontal else {"rotation": 30, "ha": "right"}))
    if band:
        (ax.axvspan if horizontal else ax.axhspan)(-band, band, color="0.9", zorder=0, label="within noise")
        (ax.axvline if horizontal else ax.axhline)(0, color="black", lw=0.8)
    if horizontal:
        ax.invert_yaxis()  # first group at the top, as in the table
    (ax.set_xlabel if horizontal else ax.set_ylabel)(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, path)


def plot_severity(runs: list[dict], path: Path) -> None:
    """Mean accuracy over all corruptions against severity, clean accuracy at severity 0."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ticks: set[int] = set()
    for r in runs:
        c = r["corruptions"]
        sev = [0] + list(c.get("severities") or range(1, len(c.get("mean_acc_by_severity") or []) + 1))
        ax.plot(sev, [c.get("clean_acc")] + list(c.get("mean_acc_by_severity") or []), marker="o", label=r["label"])
        ticks.update(sev)
    ax.set_xticks(sorted(ticks), ["clean" if t == 0 else str(t) for t in sorted(ticks)])
    ax.set(xlabel="severity", ylabel="mean accuracy over corruptions", title="robustness to corruptions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, path)
