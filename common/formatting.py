"""How the report writes numbers: accuracies, differences, times, counts; and Stat, a mean over seed repeats."""
from __future__ import annotations

import math

DASH = "–"


def is_num(x) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Stat(float):
    """The mean of a figure over seed repeats; a float everywhere, with .std (sample, ddof 1) and .n besides."""

    std: float
    n: int

    def __new__(cls, values: list[float]) -> "Stat":
        mean = sum(values) / len(values)
        obj = super().__new__(cls, mean)
        obj.n = len(values)
        obj.std = math.sqrt(sum((v - mean) ** 2 for v in values) / (obj.n - 1)) if obj.n > 1 else 0.0
        return obj


def f_acc(x) -> str:
    """Accuracy-like fraction, 4 decimals; a mean over seeds as mean ± std."""
    if isinstance(x, Stat) and x.n > 1 and math.isfinite(x):
        return f"{x:.4f} ± {x.std:.4f}"
    return f"{x:.4f}" if is_num(x) else DASH


def f_pp(d) -> str:
    """A difference of fractions in percentage points."""
    return f"{d * 100:+.1f} pp" if is_num(d) else DASH


def f_time(s) -> str:
    """Seconds as s, min or h."""
    if not is_num(s):
        return DASH
    if s < 120:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def f_int(x) -> str:
    """Integer with thousands separators."""
    return f"{round(x):,}" if is_num(x) else DASH


def f_mib(x) -> str:
    """A size in MiB, 2 decimals."""
    return f"{x:.2f}" if is_num(x) else DASH


def f_rate(x) -> str:
    """Throughput: no decimals unless small."""
    return (f"{x:,.0f}" if x >= 100 else f"{x:.1f}") if is_num(x) else DASH


def f_g(x) -> str:
    """Compact number (learning rates, ratios) or the value as text."""
    return f"{x:g}" if is_num(x) else DASH if x is None else str(x)
