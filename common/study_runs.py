"""A study's finished runs as the report reads them: their fields, seed repeats merged into one configuration,
and the rule for when a difference between two of them means nothing (test-set noise, seed spread).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from common.architectures import ARCHS
from common.data import display_name
from common.formatting import Stat, f_g, f_pp, is_num

NOISE = 0.01  # ~1 pp: on a 750-image test set that is 7-8 images, inside run-to-run variation
SPREAD_RULE = ("A difference involving a repeated configuration counts as within the seed spread when it is smaller "
               "than two standard errors of the difference, 2·√(s₁²/n₁ + s₂²/n₂), with s the sample standard "
               "deviation over a configuration's n seeds; a configuration run once is taken to vary as much as the "
               "repeated one.")
MODEL_NAMES = {name: spec.display for name, spec in ARCHS.items()}


def _combine(values: list):
    """One value for several repeats: numbers a Stat (equal non-floats stay), dicts key by key, the rest the first."""
    first = values[0]
    if len(values) == 1:
        return first
    if all(isinstance(v, dict) for v in values):
        return {k: _combine([v[k] for v in values if k in v]) for k in first}
    if all(is_num(v) for v in values) and (any(isinstance(v, float) for v in values) or len(set(values)) > 1):
        return Stat(values)
    return first


def collapse_repeats(runs: list[dict]) -> list[dict]:
    """Finished runs with one entry per configuration: seed repeats (same "repeat" key) merged into their means."""
    by_key: dict[str, list[dict]] = {}
    for r in runs:
        by_key.setdefault(r.get("repeat") or r["name"], []).append(r)
    out = []
    for key, members in by_key.items():
        if len(members) == 1:
            out.append(members[0])
            continue
        # robustness results and files come from the repeat that has them (the runner explains one run)
        rep = max(members, key=lambda r: (bool(r.get("corruptions")), len(r.get("files") or {})))
        seeds = sorted(r["vars"].get("seed", 0) for r in members)
        out.append({**rep, "name": key, "seeds": seeds,
                    "label": re.sub(r", seed \d+$", "", members[0]["label"]) + f" ({len(members)} seeds)",
                    "vars": {k: v for k, v in members[0]["vars"].items() if k != "seed"},
                    "metrics": _combine([r["metrics"] for r in members]),
                    "eval": _combine([r["eval"] for r in members]) if all(r.get("eval") for r in members)
                    else rep.get("eval")})
    return out


def var_text(key: str, v) -> str:
    """A group variable's value as shown to readers."""
    if key == "model":
        return MODEL_NAMES.get(v, str(v))
    if key in ("fraction", "labelled_fraction") and is_num(v):
        return f"{v * 100:g}%"
    return f_g(v)


def metric(r: dict, key: str):
    """A field of the run's metrics.json, or None."""
    return (r.get("metrics") or {}).get(key)


def best_val(r: dict) -> float:
    """Best validation accuracy, for ranking (missing sorts last)."""
    v = metric(r, "best_val_acc")
    return v if is_num(v) else -math.inf


def macro_f1(r: dict):
    """Test macro F1 from metrics, else from eval.json."""
    f = metric(r, "test_macro_f1")
    return f if is_num(f) else ((r.get("eval") or {}).get("macro") or {}).get("f1")


def train_time(r: dict):
    """Training seconds including a one-off feature extraction and a linear probe, the honest cost of the run."""
    t = metric(r, "train_seconds")
    extra = (metric(r, "feature_extraction_seconds") or 0) + (metric(r, "probe_seconds") or 0)
    return t + extra if is_num(t) else None


def arch_key(r: dict) -> str:
    """Architecture key (scratch_cnn, resnet18, mobilenet_v2, ...)."""
    return metric(r, "arch") or r["vars"].get("model") or "?"


def model_name(r: dict) -> str:
    """Architecture as shown to readers."""
    return MODEL_NAMES.get(arch_key(r), arch_key(r))


def mode_name(r: dict) -> str:
    """Transfer strategy or training mode (fc, blocks34, full)."""
    return str(r["vars"].get("strategy") or metric(r, "mode") or "")


def delta(a, b):
    """a - b, or None when either is missing."""
    return a - b if is_num(a) and is_num(b) else None


def init_text(r: dict) -> str:
    """How the run's weights started."""
    if arch_key(r) == "scratch_cnn":
        return "random initialisation (from scratch)"
    w = (r.get("config") or {}).get("weights")
    src = w.get("source") if isinstance(w, dict) else w
    if str(src).lower() == "none":
        return "random initialisation"
    return f"pretrained ImageNet weights ({src or 'torchvision'})"


def recalls(r: dict) -> dict[str, float]:
    """Per-class test recall by English class name, in class order."""
    ev = r.get("eval") or {}
    pc = ev.get("per_class") or {}
    names = [display_name(c) for c in ev.get("classes") or []] or [
        k for k in pc if k not in ("accuracy", "macro avg", "weighted avg")]
    return {c: pc[c]["recall"] for c in names if isinstance(pc.get(c), dict) and is_num(pc[c].get("recall"))}


def sortkey(v) -> tuple:
    """Numbers in order, then text, with the reference settings ('none', 'baseline') first."""
    return (-1, 0, "") if str(v) in ("none", "baseline") else (0, v, "") if is_num(v) else (1, 0, str(v))


def two_se(a, b) -> float | None:
    """Two standard errors of a - b when either is a mean over seeds (SPREAD_RULE); None when neither is."""
    sd = {i: x.std for i, x in enumerate((a, b)) if isinstance(x, Stat) and x.n > 1}
    if not sd:
        return None
    n = [x.n if isinstance(x, Stat) else 1 for x in (a, b)]
    s = [sd.get(i, next(iter(sd.values()))) for i in (0, 1)]  # a single run: the repeated one's std
    return 2 * math.sqrt(s[0] ** 2 / n[0] + s[1] ** 2 / n[1])


@dataclass(frozen=True)
class Spread:
    """When a difference of accuracies is too small to mean anything: within the noise or the seed spread."""

    noise: float = NOISE

    @classmethod
    def for_test_set(cls, n_test: int | None) -> "Spread":
        """1 pp, or 3 test images where the test set is small enough for that to be more."""
        return cls(max(NOISE, 3 / n_test) if n_test else NOISE)

    def within(self, d, a=None, b=None) -> str | None:
        """'within seed spread' or 'within noise' for the difference d = a - b, or None when it is beyond both."""
        if not is_num(d):
            return None
        se2 = two_se(a, b)
        if se2 is not None and abs(d) < se2:
            return f"within seed spread, 2 SE {se2 * 100:.1f} pp"
        return "within noise" if abs(d) < self.noise else None

    def noisy(self, d, signed: bool = True, a=None, b=None) -> str:
        """Difference in pp, flagged when it is within the seed spread of a and b or within noise."""
        text = f_pp(d) if signed or not is_num(d) else f"{abs(d) * 100:.1f} pp"
        flag = self.within(d, a, b)
        return text + (f" ({flag})" if flag else "")
