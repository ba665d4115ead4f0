"""Classification metrics (scikit-learn) and the cross-run comparison table."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro and weighted precision/recall/F1, the per-class report and the confusion matrix."""
    labels = list(range(len(class_names)))
    out = {"accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))), "n": int(len(y_true))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out[avg] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    out["per_class"] = classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                             output_dict=True, zero_division=0)
    out["report"] = classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                          digits=4, zero_division=0)
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Macro-averaged F1 over all classes (absent classes count as zero)."""
    _, _, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=list(range(num_classes)),
                                                 average="macro", zero_division=0)
    return float(f)


COMPARE_COLUMNS = [
    ("run", "run"), ("model", "arch"), ("mode", "mode"), ("lr", "lr"), ("batch size", "batch_size"),
    ("epochs", "epochs_run"), ("best val acc", "best_val_acc"), ("test acc", "test_acc"),
    ("macro F1", "test_macro_f1"), ("trainable params", "trainable_params"), ("total params", "total_params"),
    ("train time (s)", "train_seconds"), ("s/epoch", "seconds_per_epoch"), ("train img/s", "train_img_per_s"),
    ("inference img/s", "eval_img_per_s"), ("peak memory (MiB)", "peak_memory_mb"), ("checkpoint (MiB)", "checkpoint_mb"),
    ("device", "device"),
]


def collect_runs(runs_dir: Path) -> list[dict]:
    """metrics.json of every finished run folder under runs_dir, sorted by best validation accuracy."""
    rows = []
    for path in sorted(runs_dir.glob("*/metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except ValueError:
            continue
        metrics["run"] = path.parent.name
        rows.append(metrics)
    return sorted(rows, key=lambda m: -m.get("best_val_acc", 0))


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
    md = ["| " + " | ".join(title for title, _ in COMPARE_COLUMNS) + " |",
          "|" + "|".join("---" if key in ("run", "arch", "mode", "device") else "---:" for _, key in COMPARE_COLUMNS) + "|"]
    for r in rows:
        cells = [f"{r['lr']:g}" if key == "lr" and r.get("lr") is not None else _fmt(r.get(key))
                 for _, key in COMPARE_COLUMNS]
        md.append("| " + " | ".join(cells) + " |")
    return buf.getvalue(), "\n".join(md) + "\n"
