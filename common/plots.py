"""Figures: confusion matrix, training curves, image grids and run comparisons, saved atomically as PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.files import atomic_write  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Write a figure as PNG atomically, then close it."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def plot_confusion_matrix(cm: np.ndarray, names: list[str], path: Path, title: str = "") -> None:
    """Counts and row-normalised (recall) confusion matrices side by side, as PNG."""
    save_figure(confusion_figure(cm, names, title), path)


def confusion_figure(cm: np.ndarray, names: list[str], title: str = ""):
    """Counts and row-normalised (recall) confusion matrices side by side."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(names)
    size = max(5.0, 0.55 * n)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 2, size))
    fig.subplots_adjust(wspace=0.45)
    for ax, data, label, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "row-normalised", ".2f")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if data.max() > 0 else 1)
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({label})" if title else label)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    v = data[i, j]
                    ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 * data.max() else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Loss and accuracy, train and val, against epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(epochs, [h["train_acc"] for h in history], label="train")
    b.plot(epochs, [h["val_acc"] for h in history], label="val")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_image_grid(images: list[np.ndarray], captions: list[str], path: Path, title: str = "", cols: int = 5,
                    tile: tuple[float, float] = (3.0, 3.3), fontsize: float = 8, dpi: int = 120) -> None:
    """image_grid_figure as PNG."""
    save_figure(image_grid_figure(images, captions, title, cols, tile, fontsize), path, dpi=dpi)


def image_grid_figure(images: list[np.ndarray], captions: list[str], title: str = "", cols: int = 5,
                      tile: tuple[float, float] = (3.0, 3.3), fontsize: float = 8):
    """A grid of RGB uint8 images, each tile inches wide and high with its caption above it, cols to a row.

    Constrained layout keeps the title clear of the captions, two-line ones included.
    """
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(tile[0] * cols, tile[1] * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img)
        ax.set_title(cap, fontsize=fontsize)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    if title:
        fig.suptitle(title)
    return fig


def plot_comparison(rows: list[dict], path_val: Path, path_time: Path) -> None:
    """Validation accuracy against epoch for every run, and test accuracy against training time."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in rows:
        hist = r.get("history") or []
        ax.plot([h["epoch"] for h in hist], [h["val_acc"] for h in hist], marker=".", label=r["run"])
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    save_figure(fig, path_val)
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.scatter(r.get("train_seconds", 0), r.get("test_acc", 0))
        ax.annotate(f"{r['arch']}/{r['mode']}", (r.get("train_seconds", 0), r.get("test_acc", 0)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("symlog")
    ax.set(xlabel="training time (s, device as in the table)", ylabel="test accuracy",
           title="accuracy vs training time")
    ax.grid(alpha=0.3)
    save_figure(fig, path_time)


def plot_corruptions(accuracy: dict[str, list[float]], severities: list[int], clean_acc: float,
                     mean_by_severity: list[float], path: Path, title: str = "") -> None:
    """Accuracy against corruption severity, one line per corruption and the mean in bold; clean at severity 0."""
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [0, *severities]
    for name, accs in accuracy.items():
        ax.plot(xs, [clean_acc, *accs], marker="o", linewidth=1.2, alpha=0.85, label=name.replace("_", " "))
    ax.plot(xs, [clean_acc, *mean_by_severity], color="black", linewidth=3, marker="s", label="mean")
    ax.set_xticks(xs, ["clean", *map(str, severities)])
    ax.set(xlabel="severity", ylabel="accuracy", ylim=(0, 1), title=title or "accuracy under corruptions")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)


def plot_ood_hist(score_in: np.ndarray, score_out: np.ndarray, path: Path, title: str = "",
                  labels: tuple[str, str] = ("in-distribution", "out-of-distribution")) -> None:
    """Histograms of a confidence score for in- and out-of-distribution images, each summing to 1."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = np.linspace(0, 1, 41)
    for scores, label, color in ((score_in, labels[0], "tab:blue"), (score_out, labels[1], "tab:orange")):
        scores = np.asarray(scores)
        ax.hist(scores, bins=bins, weights=np.full(len(scores), 1 / max(len(scores), 1)), alpha=0.6, color=color,
                label=f"{label} (n={len(scores)}, mean {scores.mean():.2f})")
    ax.set(xlabel="maximum softmax probability", ylabel="fraction of images", xlim=(0, 1), title=title)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom, so the legend never covers a bar
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    save_figure(fig, path)
