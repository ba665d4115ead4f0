"""Classification metrics and the cross-run comparison table."""
from __future__ import annotations

import csv
import io
import json

import numpy as np

from common.markdown import markdown_table


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro and weighted precision/recall/F1, the per-class report and the confusion matrix."""
    # scikit-learn takes a second to import: only evaluation pays for it, not every training run's start.
    from sklearn.metrics import classification_report, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    out = {"accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))), "n": int(len(y_true))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out[avg] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    out["per_class"] = classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                             output_dict=True, zero_division=0)
    out["report"] = classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                          digits=4, zero_division=0)
    out["confusion_matrix"] = confusion(y_true, y_pred, len(class_names)).tolist()
    return out


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes x num_classes counts, rows the true class, columns the predicted one."""
    pairs = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Macro-averaged F1 over all classes (a class with no true or predicted image counts as zero)."""
    cm = confusion(y_true, y_pred, num_classes)
    hits, actual, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    denominator = actual + predicted
    f1 = np.divide(2 * hits, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return float(f1.mean())


COMPARE_COLUMNS = [
    ("run", "run"), ("model", "arch"), ("mode", "mode"), ("lr", "lr"), ("batch size", "batch_size"),
    ("epochs", "epochs_run"), ("best val acc", "best_val_acc"), ("test acc", "test_acc"),
    ("macro F1", "test_macro_f1"), ("trainable params", "trainable_params"), ("total params", "total_params"),
    ("train time (s)", "train_seconds"), ("s/epoch", "seconds_per_epoch"), ("train img/s", "train_img_per_s"),
    ("inference img/s", "eval_img_per_s"), ("peak memory (MiB)", "peak_memory_mb"),
    ("checkpoint (MiB)", "checkpoint_mb"), ("device", "device"),
]


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"


def comparison_tables(rows: list[dict]) -> tuple[str, str]:
    """(CSV, Markdown) of the comparison, one row per run."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([title for title, _ in COMPARE_COLUMNS])
    for r in rows:
        writer.writerow([r.get(key, "") for _, key in COMPARE_COLUMNS])
    md = markdown_table([title for title, _ in COMPARE_COLUMNS],
                        [[f"{r['lr']:g}" if key == "lr" and r.get("lr") is not None else _fmt(r.get(key))
                          for _, key in COMPARE_COLUMNS] for r in rows],
                        "".join("l" if key in ("run", "arch", "mode", "device") else "r" for _, key in COMPARE_COLUMNS))
    return buf.getvalue(), md + "\n"


# config.json keys that do not change what is trained: the seed, names, paths and the machine. Runs whose configs
# agree on everything else are repeats of one configuration.
NOT_CONFIGURATION = ("seed", "tag", "resume", "output_dir", "split_file", "data_dir", "workers", "host", "python",
                     "torch")
SEED_STATS = [("best val acc", "best_val_acc"), ("test acc", "test_acc"), ("macro F1", "test_macro_f1"),
              ("train time (s)", "train_seconds")]


def configuration(config: dict) -> str:
    """A run's configuration as a key: its config.json without the entries of NOT_CONFIGURATION."""
    return json.dumps({k: v for k, v in config.items() if k not in NOT_CONFIGURATION}, sort_keys=True, default=str)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0


def seed_repeats(runs: list[dict]) -> list[list[dict]]:
    """Groups of at least two finished runs (entries of common.runs.finished_runs) that differ only by seed.

    Each run in a group is its metrics with "run" (the folder name) and "seed".
    """
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r["config"] is None:
            continue  # no readable config: the run cannot be matched, it stays a row of its own
        row = {**r["metrics"], "run": r["run_dir"].name, "seed": r["config"].get("seed")}
        groups.setdefault(configuration(r["config"]), []).append(row)
    return [g for g in groups.values() if len(g) > 1]


def seed_tables(groups: list[list[dict]]) -> tuple[str, str]:
    """(CSV, Markdown) with one row per repeated configuration: n, seeds, and mean ± std of SEED_STATS."""
    head = ["runs", "model", "mode", "lr", "batch size", "epochs", "n", "seeds"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(head + [f"{t} {s}" for t, _ in SEED_STATS for s in ("mean", "std")])
    md = []
    for g in sorted(groups, key=lambda g: -mean_std([r.get("best_val_acc", 0) for r in g])[0]):
        g = sorted(g, key=lambda r: (r["seed"] is None, r["seed"]))
        first = g[0]
        cells = [" ".join(r["run"] for r in g), first.get("arch", ""), first.get("mode", ""),
                 f"{first['lr']:g}" if first.get("lr") is not None else "", _fmt(first.get("batch_size")),
                 _fmt(first.get("epochs_run")), str(len(g)), " ".join(str(r["seed"]) for r in g)]
        stats = [mean_std([r[key] for r in g]) if all(isinstance(r.get(key), (int, float)) for r in g) else None
                 for _, key in SEED_STATS]
        writer.writerow(cells + [v for s in stats for v in (s or ("", ""))])
        md.append(cells + [f"{_fmt(float(s[0]))} ± {_fmt(float(s[1]))}" if s else "" for s in stats])
    align = "lll" + "r" * (len(head) - 3 + len(SEED_STATS))
    return buf.getvalue(), markdown_table(head + [t for t, _ in SEED_STATS], md, align) + "\n"
