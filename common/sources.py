"""Where each image of a dataset comes from, and accuracy broken down by it.

A dataset may ship a sources.csv, inside its data folder or beside it (as ../shared/data/animals10/ does), with
the columns file (the image's path below the data folder, `<class>/<name>`) and source. Test accuracy on photos
from the sources a model was trained on overstates what it does on new photos; the breakdown shows by how much,
and source_gap gives the gap between the reference source (the real Animals-10 photos) and the rest with its
standard error, since the reference part of a test split can be small. No sources.csv: no breakdown.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from common.cli import DataError

FILE_NAME = "sources.csv"
REFERENCE = "Animals-10"  # the source that looks like the competition's photos
UNLISTED = "(not in sources.csv)"


def read_sources(data_dir: str | Path) -> dict[str, str] | None:
    """{"<class>/<name>": source} from the data folder's sources.csv (inside it, else beside it); None without one."""
    data_dir = Path(data_dir)
    path = next((p for p in (data_dir / FILE_NAME, data_dir.parent / FILE_NAME) if p.is_file()), None)
    if path is None:
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} cannot be read ({type(e).__name__}); fix it or remove it") from None
    if rows and not {"file", "source"} <= set(rows[0]):
        raise DataError(f"{path} has no 'file' and 'source' columns; give them, or remove the file")
    return {row["file"].replace("\\", "/"): row["source"] for row in rows if row.get("file") and row.get("source")}


def by_source(sources: Sequence[str], correct: np.ndarray) -> dict[str, dict]:
    """Images, right answers and accuracy per source (one source per image), the largest source first."""
    counts: dict[str, list[int]] = {}
    for source, ok in zip(sources, np.asarray(correct, dtype=bool)):
        n_right = counts.setdefault(source, [0, 0])
        n_right[0] += 1
        n_right[1] += int(ok)
    return {src: {"n": n, "correct": right, "accuracy": right / n}
            for src, (n, right) in sorted(counts.items(), key=lambda kv: -kv[1][0])}


def source_gap(table: Mapping[str, dict], reference: str = REFERENCE) -> dict | None:
    """The reference source's accuracy minus the other sources' pooled accuracy, with the standard error of that
    difference of two proportions, sqrt(p1 q1 / n1 + p2 q2 / n2); None without both."""
    ref = table.get(reference)
    others = [v for k, v in table.items() if k != reference]
    n_other = sum(v["n"] for v in others)
    if not ref or not n_other:
        return None
    p1, n1 = ref["accuracy"], ref["n"]
    p2 = sum(v["correct"] for v in others) / n_other
    return {"reference": reference, "reference_n": n1, "reference_acc": p1, "other_n": n_other, "other_acc": p2,
            "gap": p1 - p2, "se": math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n_other)}


def breakdown(sources: Sequence[str], correct: np.ndarray) -> dict:
    """{"by_source": by_source(...), "source_gap": source_gap(...)}: what every evaluation records."""
    table = by_source(sources, correct)
    return {"by_source": table, "source_gap": source_gap(table)}


def gap_text(gap: Mapping) -> str:
    """The gap and its standard error, as tables show it: '-4.0 ± 1.5 pp'."""
    return f"{gap['gap'] * 100:+.1f} ± {gap['se'] * 100:.1f} pp"


def describe_gap(gap: Mapping) -> str:
    """One line: accuracy on the reference source against the others, and the gap with its standard error."""
    return (f"{gap['reference']} photos {gap['reference_acc']:.4f} ({gap['reference_n']} images) against "
            f"{gap['other_acc']:.4f} on the other sources ({gap['other_n']}): "
            f"{gap['gap'] * 100:+.1f} pp ± {gap['se'] * 100:.1f} pp (1 SE)")
