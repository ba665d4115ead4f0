"""The study report: one self-contained HTML page and the same content as Markdown, from the runner's study dict.

build_report(study, out_dir) writes out_dir/index.html, out_dir/report.md and every figure under out_dir/img/,
so the folder can be zipped and handed in alone. Every number comes from the study dict.

Runs that repeat one configuration over seeds (the same "repeat" key, see common/plans.py) are shown as one
configuration: every number is the mean of the finished repeats (a Stat, which also carries the sample standard
deviation and the count), accuracies are written "mean ± std", and a comparison with such a configuration says
whether the difference is within two standard errors of the difference (SPREAD_RULE).
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from common.architectures import ARCHS  # noqa: E402
from common.data import display_name  # noqa: E402
from common.files import atomic_write, atomic_write_text  # noqa: E402
from common.plots import save_figure  # noqa: E402

NOISE = 0.01  # ~1 pp: on a 750-image test set that is 7-8 images, inside run-to-run variation
DASH = "–"
SPREAD_RULE = ("A difference involving a repeated configuration counts as within the seed spread when it is smaller "
               "than two standard errors of the difference, 2·√(s₁²/n₁ + s₂²/n₂), with s the sample standard "
               "deviation over a configuration's n seeds; a configuration run once is taken to vary as much as the "
               "repeated one.")
MODEL_NAMES = {name: spec.display for name, spec in ARCHS.items()}
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#f6f7f9;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;min-height:100vh}
h1{font-size:1.8em;margin:.2em 0}h2{border-bottom:2px solid #e3e6ea;padding-bottom:4px;margin-top:2.2em}
h3{margin-top:1.6em}h4,h5,h6{margin:1.2em 0 .4em}.meta{color:#59636e;margin-top:0}
.box{border-radius:8px;padding:10px 18px;margin:16px 0;border:1px solid}.box h2{margin-top:.3em;border:0}
.notes{background:#fff8e6;border-color:#f0c36d}.summary{background:#eef5ff;border-color:#9cc3f5}
.failed{background:#fdeeee;border-color:#eaa0a0}.box-title{font-weight:600;margin:.3em 0}
.warn{background:#fde2e1;border-color:#d9534f;border-width:2px}
.toc{background:#f6f7f9;border-radius:8px;padding:8px 18px;columns:2;margin:16px 0}.toc ol{margin:.3em 0}
.scroll{overflow-x:auto;margin:10px 0}table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 7px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th{background:#f0f2f5;vertical-align:bottom}tr:nth-child(even) td{background:#fafbfc}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}td.n{white-space:nowrap}
td.best{background:#dcf5e3!important;font-weight:600}
.figs{display:grid;gap:14px;margin:12px 0}.c2{grid-template-columns:1fr 1fr}.narrow{max-width:760px}
figure{margin:0}figure img{max-width:100%;border:1px solid #e3e6ea;border-radius:4px}
figcaption{color:#59636e;font-size:13px}code{background:#f0f2f5;padding:0 3px;border-radius:3px}
.md{border-left:3px solid #e3e6ea;padding:0 14px;max-height:640px;overflow:auto}
.md h4{font-size:1.05em}.md h5{font-size:1em}.md h6{font-size:.95em;font-family:monospace}
pre{background:#f6f7f9;padding:10px;white-space:pre-wrap;font-size:12.5px}summary{cursor:pointer;font-weight:600}
@media (max-width:800px){.c2{grid-template-columns:1fr}.toc{columns:1}main{padding:12px}}
"""


# ---------- formatting ----------

def _num(x) -> bool:
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


def _combine(values: list):
    """One value for several repeats: numbers a Stat (equal non-floats stay), dicts key by key, the rest the first."""
    first = values[0]
    if len(values) == 1:
        return first
    if all(isinstance(v, dict) for v in values):
        return {k: _combine([v[k] for v in values if k in v]) for k in first}
    if all(_num(v) for v in values) and (any(isinstance(v, float) for v in values) or len(set(values)) > 1):
        return Stat(values)
    return first


def _collapse_repeats(runs: list[dict]) -> list[dict]:
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


def f_acc(x) -> str:
    """Accuracy-like fraction, 4 decimals; a mean over seeds as mean ± std."""
    if isinstance(x, Stat) and x.n > 1 and math.isfinite(x):
        return f"{x:.4f} ± {x.std:.4f}"
    return f"{x:.4f}" if _num(x) else DASH


def f_pp(d) -> str:
    """A difference of fractions in percentage points."""
    return f"{d * 100:+.1f} pp" if _num(d) else DASH


def f_time(s) -> str:
    """Seconds as s, min or h."""
    if not _num(s):
        return DASH
    if s < 120:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def f_int(x) -> str:
    """Integer with thousands separators."""
    return f"{round(x):,}" if _num(x) else DASH


def f_rate(x) -> str:
    """Throughput: no decimals unless small."""
    return (f"{x:,.0f}" if x >= 100 else f"{x:.1f}") if _num(x) else DASH


def f_g(x) -> str:
    """Compact number (learning rates, ratios) or the value as text."""
    return f"{x:g}" if _num(x) else DASH if x is None else str(x)


def _var(key: str, v) -> str:
    """A group variable's value as shown to readers."""
    if key == "model":
        return MODEL_NAMES.get(v, str(v))
    if key == "fraction" and _num(v):
        return f"{v * 100:g}%"
    return f_g(v)


def _slug(text: str) -> str:
    """GitHub-style heading anchor, so the Markdown contents links work too."""
    return re.sub(r"[^\w\- ]", "", text.lower()).strip().replace(" ", "-") or "section"


def _inline(text: str) -> str:
    """Escape text, then render `code` and **bold**."""
    out = []
    for part in re.split(r"(`[^`\n]+`)", text):
        if len(part) > 1 and part[0] == part[-1] == "`":
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)


def markdown_to_html(text: str, shift: int = 0) -> str:
    """Headings (moved down by shift levels), bullet lists, pipe tables and paragraphs; all text escaped."""
    out: list[str] = []
    block: list[str] = []
    kind = ""

    def flush() -> None:
        if kind == "p":
            out.append(f"<p>{_inline(' '.join(block))}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block) + "</ul>")
        elif kind == "table":
            rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in block]
            sep = len(rows) > 1 and all(re.fullmatch(r":?-+:?", c) for c in rows[1])
            right = [c.endswith(":") for c in rows[1]] if sep else []
            head, body = (rows[0], rows[2:]) if sep else ([], rows)

            def cells(row: list[str], tag: str) -> str:
                return "".join(f'<{tag}{" class=n" if i < len(right) and right[i] else ""}>{_inline(c)}</{tag}>'
                               for i, c in enumerate(row))
            out.append('<div class="scroll"><table>' + (f"<tr>{cells(head, 'th')}</tr>" if head else "")
                       + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body) + "</table></div>")
        block.clear()

    for line in text.splitlines():
        s = line.strip()
        head = re.match(r"(#{1,6})\s+(.*)", s)
        new = ("" if not s else "h" if head else "table" if s.startswith("|")
               else "ul" if re.match(r"[-*+]\s", s) else "ul+" if kind == "ul" and line[:1].isspace() else "p")
        if new == "ul+":  # an indented line continues the previous bullet
            block[-1] += " " + s
            continue
        if new != kind or new in ("h", ""):
            flush()
        kind = new
        if head:
            level = min(6, len(head[1]) + shift)
            out.append(f"<h{level}>{_inline(head[2])}</h{level}>")
        elif new:
            block.append(s[2:].strip() if new == "ul" else s)
    flush()
    return "\n".join(out)


# ---------- run accessors ----------

def _m(r: dict, key: str):
    """A field of the run's metrics.json, or None."""
    return (r.get("metrics") or {}).get(key)


def _val(r: dict) -> float:
    """Best validation accuracy, for ranking (missing sorts last)."""
    v = _m(r, "best_val_acc")
    return v if _num(v) else -math.inf


def _f1(r: dict):
    """Test macro F1 from metrics, else from eval.json."""
    f = _m(r, "test_macro_f1")
    return f if _num(f) else ((r.get("eval") or {}).get("macro") or {}).get("f1")


def _time(r: dict):
    """Training seconds including a one-off feature extraction, the honest cost of a cached-feature run."""
    t = _m(r, "train_seconds")
    return t + (_m(r, "feature_extraction_seconds") or 0) if _num(t) else None


def _arch(r: dict) -> str:
    """Architecture key (scratch_cnn, resnet18, mobilenet_v2, ...)."""
    return _m(r, "arch") or r["vars"].get("model") or "?"


def _model(r: dict) -> str:
    """Architecture as shown to readers."""
    return MODEL_NAMES.get(_arch(r), _arch(r))


def _mode(r: dict) -> str:
    """Transfer strategy or training mode (fc, blocks34, full)."""
    return str(r["vars"].get("strategy") or _m(r, "mode") or "")


def _delta(a, b):
    """a - b, or None when either is missing."""
    return a - b if _num(a) and _num(b) else None


def _init(r: dict) -> str:
    """How the run's weights started."""
    if _arch(r) == "scratch_cnn":
        return "random initialisation (from scratch)"
    w = (r.get("config") or {}).get("weights")
    src = w.get("source") if isinstance(w, dict) else w
    if str(src).lower() == "none":
        return "random initialisation"
    return f"pretrained ImageNet weights ({src or 'torchvision'})"


def _recalls(r: dict) -> dict[str, float]:
    """Per-class test recall by English class name, in class order."""
    ev = r.get("eval") or {}
    pc = ev.get("per_class") or {}
    names = [display_name(c) for c in ev.get("classes") or []] or [
        k for k in pc if k not in ("accuracy", "macro avg", "weighted avg")]
    return {c: pc[c]["recall"] for c in names if isinstance(pc.get(c), dict) and _num(pc[c].get("recall"))}


def _sortkey(v) -> tuple:
    """Numbers in order, then text, with the reference settings ('none', 'baseline') first."""
    return (-1, 0, "") if str(v) in ("none", "baseline") else (0, v, "") if _num(v) else (1, 0, str(v))


# ---------- plots ----------

def _colors(runs: list[dict]) -> dict[str, str]:
    """One matplotlib colour per model, the same in every figure."""
    return {m: f"C{i}" for i, m in enumerate(sorted({_model(r) for r in runs}))}


def _plot_scatter(runs: list[dict], numbers: dict[str, int], path: Path) -> None:
    """Test accuracy against training time (log x), each point labelled with its number in the runs table."""
    pts = [(max(_time(r), 1e-2), _m(r, "test_acc"), r) for r in runs if _num(_time(r)) and _num(_m(r, "test_acc"))]
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    ax.set_xscale("log")
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[colors[_model(p[2])] for p in pts], s=30, zorder=3)
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


def _plot_val_curves(runs: list[dict], numbers: dict[str, int], path: Path, top: int = 8) -> None:
    """Validation accuracy per epoch, one line per run; the best `top` in colour, the rest grey."""
    ranked = sorted(runs, key=_val, reverse=True)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, r in enumerate(ranked):
        hist = _m(r, "history") or []
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


def _plot_heatmap(grid: list[list], rows: list, cols: list, path: Path, title: str) -> None:
    """Best val acc on an lr x batch-size grid, values written in the cells."""
    data = [[v if _num(v) else math.nan for v in row] for row in grid]
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


def _plot_bars(runs: list[dict], path: Path, title: str) -> None:
    """Test accuracy per run as bars, training time written on each."""
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(runs) + 1.5), 4))
    accs = [_m(r, "test_acc") if _num(_m(r, "test_acc")) else 0 for r in runs]
    bars = ax.bar(range(len(runs)), accs, color=[colors[_model(r)] for r in runs])
    ax.bar_label(bars, [f"{a:.4f}\n{f_time(_time(r))}" for a, r in zip(accs, runs)], fontsize=8, padding=2)
    ax.set_xticks(range(len(runs)), [f"{_model(r)}\n{_mode(r)}" for r in runs], fontsize=8)
    ax.set(ylim=(0, 1.15), ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def _plot_lines(series: dict[str, list[tuple[float, float, float]]], path: Path, xlabel: str, title: str,
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


def _plot_grouped(groups: list[str], series: dict[str, list], path: Path, ylabel: str, title: str,
                  band: float = 0.0, horizontal: bool = False) -> None:
    """Grouped bars (one bar per series within each group); band shades +-band around zero as noise."""
    n = max(1, len(series))
    width = 0.8 / n
    size = (7.5, 0.35 * len(groups) * n + 1.3) if horizontal else (max(7.5, 0.25 * len(groups) * n + 2.5), 4)
    fig, ax = plt.subplots(figsize=size)
    for i, (name, vals) in enumerate(series.items()):
        pos = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        vals = [v if _num(v) else 0 for v in vals]
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


def _plot_severity(runs: list[dict], path: Path) -> None:
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


# ---------- the two documents ----------

class _Doc:
    """Builds the HTML page and the Markdown file side by side, so both carry the same content."""

    TOC = "\0toc\0"

    def __init__(self) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def heading(self, level: int, text: str) -> None:
        """A heading with an anchor; level 2 goes into the contents."""
        anchor = base = _slug(text)
        while anchor in self.ids:
            anchor = f"{base}-{len(self.ids)}"
        self.ids.add(anchor)
        if level == 2:
            self.toc.append((anchor, text))
        self.html.append(f'<h{level} id="{anchor}">{_inline(text)}</h{level}>')
        self.md.append(f"{'#' * level} {text}\n")

    def para(self, text: str) -> None:
        """A paragraph; `code` and **bold** are rendered."""
        self.html.append(f"<p>{_inline(text)}</p>")
        self.md.append(text + "\n")

    def bullets(self, items: list[str]) -> None:
        """A bullet list."""
        if items:
            self.html.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            self.md.append("\n".join(f"- {i}" for i in items) + "\n")

    def box(self, cls: str, title: str, items: list[str]) -> None:
        """A coloured box with a title and a bullet list."""
        self.html.append(f'<div class="box {cls}"><p class="box-title">{_inline(title)}</p>')
        self.md.append(f"**{title}**\n")
        self.bullets(items)
        self.html.append("</div>")

    def table(self, cols: list[tuple[str, Callable, str | None]], rows: list[list]) -> None:
        """cols are (header, formatter, 'max'/'min'/None); rows hold raw values; the best per column is marked."""
        numeric = [any(_num(r[i]) for r in rows) and all(_num(r[i]) or r[i] is None for r in rows)
                   for i in range(len(cols))]
        best = []
        for i, (_, _, how) in enumerate(cols):
            vals = [r[i] for r in rows if _num(r[i])]
            best.append((max if how == "max" else min)(vals) if how and len(vals) > 1 and len(set(vals)) > 1 else None)
        head = "".join(f'<th{" class=n" if n else ""}>{html.escape(h)}</th>' for n, (h, _, _) in zip(numeric, cols))
        body, md = [], []
        for r in rows:
            cells, mdc = [], []
            for i, (_, fmt, _) in enumerate(cols):
                text, win = fmt(r[i]), best[i] is not None and r[i] == best[i]
                cls = " ".join(c for c, on in (("n", numeric[i]), ("best", win)) if on)
                cells.append(f'<td{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{html.escape(text)}</td>')
                mdc.append(f"**{text}**" if win else text.replace("|", "\\|"))
            body.append("<tr>" + "".join(cells) + "</tr>")
            md.append("| " + " | ".join(mdc) + " |")
        self.html.append(f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>')
        self.md.append("\n".join(["| " + " | ".join(h for h, _, _ in cols) + " |",
                                  "|" + "|".join("---:" if n else "---" for n in numeric) + "|", *md]) + "\n")

    def figures(self, figs: list[tuple[str | None, str]], cols: int = 1, narrow: bool = False) -> None:
        """Images (paths relative to the report) with captions; each links to the full-size file."""
        figs = [(src, cap) for src, cap in figs if src]
        if not figs:
            return
        items = "".join(f'<figure><a href="{html.escape(s)}"><img src="{html.escape(s)}" alt="{html.escape(c)}" '
                        f'loading="lazy"></a><figcaption>{_inline(c)}</figcaption></figure>' for s, c in figs)
        cls = "figs" + (" c2" if cols == 2 and len(figs) > 1 else "") + (" narrow" if narrow else "")
        self.html.append(f'<div class="{cls}">{items}</div>')
        self.md.append("\n\n".join(f"![{c}]({s})" for s, c in figs) + "\n")

    def markdown(self, text: str, shift: int) -> None:
        """Embed a Markdown document, headings moved down by shift levels."""
        self.html.append(f'<div class="md">{markdown_to_html(text, shift)}</div>')
        self.md.append(re.sub(r"(?m)^(#{1,6})(?=\s)", lambda m: "#" * min(6, len(m[1]) + shift), text).strip() + "\n")

    def code(self, summary: str, text: str) -> None:
        """A collapsible code block."""
        self.html.append(f"<details><summary>{_inline(summary)}</summary><pre>{html.escape(text)}</pre></details>")
        self.md.append(f"{summary}\n\n```bash\n{text}\n```\n")

    def render(self, title: str) -> tuple[str, str]:
        """(HTML page, Markdown text)."""
        toc_html = ('<nav class="toc"><strong>Contents</strong><ol>' + "".join(
            f'<li><a href="#{a}">{_inline(t)}</a></li>' for a, t in self.toc) + "</ol></nav>")
        toc_md = "**Contents**\n\n" + "\n".join(f"{i}. [{t}](#{a})" for i, (a, t) in enumerate(self.toc, 1)) + "\n"
        body = "\n".join(self.html).replace(self.TOC, toc_html)
        page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
                f"<body><main>\n{body}\n</main></body></html>\n")
        return page, "\n".join(self.md).replace(self.TOC, toc_md)


# ---------- the report ----------

class _Report:
    """Holds the study, the finished runs and the documents while the sections are written."""

    def __init__(self, study: dict, out_dir: Path) -> None:
        self.study, self.out, self.doc = study, out_dir, _Doc()
        # copies with a label and vars always present, so the sections need not check
        runs = [{**r, "label": r.get("label") or r.get("name", "?"), "vars": r.get("vars") or {}}
                for r in study.get("runs") or []]
        self.done = sorted(_collapse_repeats([r for r in runs if r.get("status") == "done" and r.get("metrics")]),
                           key=_val, reverse=True)
        self.repeated = any(r.get("seeds") for r in self.done)
        self.failed = [r for r in runs if not (r.get("status") == "done" and r.get("metrics"))]
        self.numbers = {r["name"]: i for i, r in enumerate(self.done, 1)}
        self.n_test = next((r["eval"]["n"] for r in self.done if _num((r.get("eval") or {}).get("n"))), None)
        # 1 pp, or 3 test images where the test set is small enough for that to be more
        self.noise = max(NOISE, 3 / self.n_test) if self.n_test else NOISE

    @staticmethod
    def two_se(a, b) -> float | None:
        """Two standard errors of a - b when either is a mean over seeds (SPREAD_RULE); None when neither is."""
        sd = {i: x.std for i, x in enumerate((a, b)) if isinstance(x, Stat) and x.n > 1}
        if not sd:
            return None
        n = [x.n if isinstance(x, Stat) else 1 for x in (a, b)]
        s = [sd.get(i, next(iter(sd.values()))) for i in (0, 1)]  # a single run: the repeated one's std
        return 2 * math.sqrt(s[0] ** 2 / n[0] + s[1] ** 2 / n[1])

    def within(self, d, a=None, b=None) -> str | None:
        """'within seed spread' or 'within noise' for the difference d = a - b, or None when it is beyond both."""
        if not _num(d):
            return None
        se2 = self.two_se(a, b)
        if se2 is not None and abs(d) < se2:
            return f"within seed spread, 2 SE {se2 * 100:.1f} pp"
        return "within noise" if abs(d) < self.noise else None

    def noisy(self, d, signed: bool = True, a=None, b=None) -> str:
        """Difference in pp, flagged when it is within the seed spread of a and b or within noise."""
        text = f_pp(d) if signed or not _num(d) else f"{abs(d) * 100:.1f} pp"
        flag = self.within(d, a, b)
        return text + (f" ({flag})" if flag else "")

    def group(self, key: str) -> list[dict]:
        """Finished runs of one group, best validation accuracy first."""
        return [r for r in self.done if key in (r.get("groups") or [])]

    def setting(self, runs: list[dict]) -> str:
        """'at 30 epochs on cpu': the epochs and devices behind a figure."""
        eps = sorted({_m(r, "epochs_run") for r in runs if _num(_m(r, "epochs_run"))})
        devs = sorted({str(_m(r, "device") or self.study.get("device") or "?") for r in runs})
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
                 + f"differences under about {self.noise * 100:.1f} pp are within noise. "
                 + ("Configurations repeated over seeds (marked “n seeds”) show the mean over their runs and "
                    "accuracies as mean ± sample standard deviation; every other figure is from one run. "
                    + SPREAD_RULE
                    if self.repeated else "Every figure is from one run (one seed).")]
        best = done[0]
        scratch = [r for r in done if _arch(r) == "scratch_cnn"]
        line = (f"**Best model: {best['label']}** ({_model(best)} {_mode(best)}, {self.setting([best])}): best val acc "
                f"{f_acc(_m(best, 'best_val_acc'))}, test acc {f_acc(_m(best, 'test_acc'))}, "
                f"macro F1 {f_acc(_f1(best))}.")
        if scratch and scratch[0] is not best:
            sc = scratch[0]
            a, b = _m(sc, "test_acc"), _m(best, "test_acc")
            line += (f" It starts from {_init(best)}; the best from-scratch run ({sc['label']}, {self.setting([sc])}) "
                     f"reaches test acc {f_acc(a)}, {self.noisy(_delta(a, b), a=a, b=b)} against the best model.")
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
        for model in sorted({_model(r) for r in strat}):
            rs = sorted((r for r in strat if _model(r) == model), key=lambda r: _m(r, "trainable_params") or 0)
            top, first = max(rs, key=_val), rs[0]
            parts = "; ".join(f"{_mode(r)} ({f_int(_m(r, 'trainable_params'))} trainable) test "
                              f"{f_acc(_m(r, 'test_acc'))} in {f_time(_time(r))}" for r in rs)
            ratio = _time(top) / _time(first) if _num(_time(top)) and _num(_time(first)) and _time(first) > 0 else None
            gain = self.noisy(_delta(_m(top, "test_acc"), _m(first, "test_acc")), a=_m(top, "test_acc"),
                              b=_m(first, "test_acc"))
            verdict = (f"training the fewest parameters ({_mode(first)}) is best on validation" if top is first else
                       f"{_mode(top)} is best on validation, {gain} test vs {_mode(first)}"
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
                subsets.setdefault(" ".join(_var(v, r["vars"].get(v)) for v in by) or _model(r), []).append(r)
            for name, sub in subsets.items():
                if len(sub) < 2:
                    continue
                hi, lo = max(sub, key=_val), min(sub, key=_val)
                out.append(f"**Learning rate** ({name}, {self.setting(sub)}): best {desc(hi)} "
                           f"(val {f_acc(_m(hi, 'best_val_acc'))}, test {f_acc(_m(hi, 'test_acc'))}), worst {desc(lo)} "
                           f"(val {f_acc(_m(lo, 'best_val_acc'))}); "
                           f"spread {self.noisy(_delta(_val(hi), _val(lo)), signed=False, a=_val(hi), b=_val(lo))} "
                           "in best val acc.")
        return out

    def answer_fractions(self) -> list[str]:
        """Accuracy at the smallest data fraction as a share of the largest, per model."""
        frac = self.group("fractions")
        parts = []
        for model in sorted({_model(r) for r in frac}):
            rs = sorted((r for r in frac if _model(r) == model), key=lambda r: r["vars"].get("fraction") or 0)
            small, full = rs[0], rs[-1]
            a, b = _m(small, "test_acc"), _m(full, "test_acc")
            if len(rs) > 1 and _num(a) and _num(b) and b > 0:
                lo, hi = (_var("fraction", r["vars"].get("fraction")) for r in (small, full))
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
            dt, dv = _delta(_m(r, "test_acc"), _m(base, "test_acc")), _delta(_val(r), _val(base))
            flag = self.within(dt, _m(r, "test_acc"), _m(base, "test_acc")) if _num(dt) else "within noise"
            key = flag.split(",")[0] if flag else "helped" if dt > 0 else "hurt"
            verdicts[key].append(f"{r['vars'].get('option')} ({f_pp(dt)} test, {f_pp(dv)} val"
                                 + (f"; {flag.split(', ', 1)[1]}" if key == "within seed spread" else "") + ")")
        return [f"**Regularization** (vs baseline test {f_acc(_m(base, 'test_acc'))}, {self.setting(reg)}): "
                + "; ".join(f"{k}: {', '.join(v)}" for k, v in verdicts.items() if v) + "."]

    def answer_imbalance(self) -> list[str]:
        """Macro and worst-class recall per remedy."""
        imb = [r for r in self.group("imbalance") if _recalls(r)]
        if not imb:
            return []
        parts = []
        for r in imb:
            rec = _recalls(r)
            worst = min(rec, key=rec.get)
            macro = ((r.get("eval") or {}).get("macro") or {}).get("recall")
            parts.append(f"{self.imb_name(r, imb)}: macro recall {f_acc(macro)}, worst class {worst} {rec[worst]:.4f}")
        for ratio in sorted({r["vars"].get("ratio") for r in imb}, key=_sortkey):
            same = [r for r in imb if r["vars"].get("ratio") == ratio]
            if len(same) > 1:  # remedies compete only at the same imbalance
                top = max(same, key=lambda r: min(_recalls(r).values()))
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
                           f"{f_pp(_delta(c.get('mean_corrupted_acc'), c.get('clean_acc')))} vs clean.")
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
        transfer = [r for r in done if _arch(r) != "scratch_cnn"]
        scratch = [r for r in done if _arch(r) == "scratch_cnn"]
        close = [r for r in done if _val(r) >= _val(done[0]) - NOISE and _num(_time(r))]
        for role, rs in (("best transfer", transfer), ("best scratch", scratch)):
            if rs:
                roles.setdefault(rs[0]["name"], []).append(role)
        fast = min(close, key=_time) if close else None
        if fast:
            roles.setdefault(fast["name"], []).append("fastest within 1 pp of best val")
        by_name = {r["name"]: r for r in done}
        line = f"**Efficiency vs accuracy** ({self.setting([by_name[n] for n in roles])})"
        if fast and fast is not done[0] and _num(_time(done[0])) and _time(fast) > 0:
            line += (f": {fast['label']} gets within 1 pp of the best validation accuracy in {f_time(_time(fast))}, "
                     f"{_time(done[0]) / _time(fast):.1f}× less than the best run ({f_time(_time(done[0]))})")
        self.doc.para(line + ".")
        self.doc.table([("role", str, None), ("run", str, None), ("best val acc", f_acc, "max"),
                        ("test acc", f_acc, "max"), ("train time", f_time, "min"), ("train img/s", f_rate, "max"),
                        ("trainable params", f_int, None), ("peak MiB", f_int, "min")],
                       [[", ".join(rl), by_name[n]["label"], _m(by_name[n], "best_val_acc"), _m(by_name[n], "test_acc"),
                         _time(by_name[n]), _m(by_name[n], "train_img_per_s"), _m(by_name[n], "trainable_params"),
                         _m(by_name[n], "peak_memory_mb")] for n, rl in roles.items()])

    def imb_name(self, r: dict, runs: list[dict]) -> str:
        """An imbalance run's column name: the remedy, with the ratio when there are several."""
        several = len({str(x["vars"].get("ratio")) for x in runs}) > 1
        return (f"ratio {f_g(r['vars'].get('ratio'))}, " if several else "") + str(r["vars"].get("remedy"))

    # ----- 2. all runs -----

    def comparison(self) -> None:
        """All finished runs in one table, plus accuracy-vs-time and validation-curve plots."""
        d, done = self.doc, self.done
        d.heading(2, "All runs")
        devices = [_m(r, "device") or self.study.get("device") or DASH for r in done]
        one = len(set(devices)) == 1  # a device column saying the same thing 30 times only costs width
        d.para(f"{len(done)} finished runs, best validation accuracy first{f', all on {devices[0]}' if one else ''}. "
               "Train time includes the one-off feature extraction of cached-feature runs; peak memory is CUDA memory "
               "on a GPU, process RSS on a CPU.")
        cols = [("#", str, None), ("run", str, None), ("model / mode", str, None),
                ("epochs", f_int, None), ("lr", f_g, None), ("batch", f_int, None), ("best val acc", f_acc, "max"),
                ("test acc", f_acc, "max"), ("macro F1", f_acc, "max"), ("train time", f_time, "min"),
                ("s/epoch", f_time, "min"), ("train img/s", f_rate, "max"), ("trainable params", f_int, None),
                ("peak MiB", f_int, "min"), ("device", str, None)]
        rows = [[self.numbers[r["name"]], r["label"], f"{_model(r)} {_mode(r)}", _m(r, "epochs_run"),
                 _m(r, "lr"), _m(r, "batch_size"), _m(r, "best_val_acc"), _m(r, "test_acc"), _f1(r), _time(r),
                 _m(r, "seconds_per_epoch"), _m(r, "train_img_per_s"), _m(r, "trainable_params"),
                 _m(r, "peak_memory_mb"), dev] for r, dev in zip(done, devices)]
        d.table(cols[:-1] if one else cols, [row[:-1] for row in rows] if one else rows)
        d.figures([(self.plot("acc_vs_time", _plot_scatter, done, self.numbers),
                    f"Test accuracy vs training time, {self.setting(done)}."),
                   (self.plot("val_acc_curves", _plot_val_curves, done, self.numbers),
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
        order = (lambda r: (_model(r), _m(r, "trainable_params") or 0)) if key == "strategies" else (
            lambda r: [_sortkey(r["vars"].get(v)) for v in names])
        runs = sorted(runs, key=order)
        cols = [(v.replace("_", " "), lambda x, v=v: _var(v, x), None) for v in names] + [
            ("best val acc", f_acc, "max"), ("test acc", f_acc, "max"), ("macro F1", f_acc, "max"),
            ("train time", f_time, "min")]
        rows = [[r["vars"].get(v) for v in names] + [_m(r, "best_val_acc"), _m(r, "test_acc"), _f1(r), _time(r)]
                for r in runs]
        if any(r.get("seeds") for r in runs):  # n of the mean ± std; 1 for a configuration run once
            cols.insert(len(names), ("seeds", f_int, None))
            rows = [row[:len(names)] + [len(r.get("seeds") or [0])] + row[len(names):] for row, r in zip(rows, runs)]
        if key == "strategies":
            cols.append(("trainable params", f_int, None))
            rows = [row + [_m(r, "trainable_params")] for row, r in zip(rows, runs)]
        base = next((r for r in runs if r["vars"].get("option") == "baseline"), None)
        if key == "regularization" and base:
            cols += [("Δ val vs baseline", f_pp, "max"), ("Δ test vs baseline", f_pp, "max")]
            rows = [row + [_delta(_val(r), _val(base)), _delta(_m(r, "test_acc"), _m(base, "test_acc"))]
                    for row, r in zip(rows, runs)]
        if key == "imbalance":
            cols += [("macro recall", f_acc, "max"), ("worst-class recall", f_acc, "max")]
            rows = [row + [((r.get("eval") or {}).get("macro") or {}).get("recall"),
                           min(_recalls(r).values(), default=None)] for row, r in zip(rows, runs)]
        d.table(cols, rows)
        getattr(self, f"group_{key}", lambda runs, base: None)(runs, base)

    def group_scratch_grid(self, runs: list[dict], base) -> None:
        """Pivot table and heatmap of best val acc over learning rate x batch size."""
        lrs = sorted({r["vars"].get("lr") for r in runs}, key=_sortkey, reverse=True)
        bss = sorted({r["vars"].get("batch_size") for r in runs}, key=_sortkey)
        cell = {(r["vars"].get("lr"), r["vars"].get("batch_size")): _m(r, "best_val_acc") for r in runs}
        grid = [[cell.get((lr, bs)) for bs in bss] for lr in lrs]
        self.doc.para("Best validation accuracy, learning rate (rows) × batch size (columns):")
        self.doc.table([("lr \\ batch", f_g, None)] + [(f_g(bs), f_acc, "max") for bs in bss],
                       [[lr] + row for lr, row in zip(lrs, grid)])
        self.doc.figures([(self.plot("scratch_grid", _plot_heatmap, grid, lrs, bss, title="best val acc"),
                           f"Best validation accuracy per learning rate and batch size, {self.setting(runs)}.")])

    def group_strategies(self, runs: list[dict], base) -> None:
        """Bar chart of test accuracy per strategy."""
        self.doc.figures([(self.plot("strategies", _plot_bars, runs, title="test accuracy per unfreezing strategy"),
                           f"Test accuracy (training time on each bar), {self.setting(runs)}.")])

    def _series(self, runs: list[dict], x: str, by: tuple[str, ...]) -> dict[str, list]:
        """(x, test acc, best val acc) points per combination of the `by` variables."""
        out: dict[str, list] = {}
        for r in runs:
            if _num(r["vars"].get(x)) and r["vars"][x] > 0:
                name = " ".join(_var(v, r["vars"].get(v, "")) for v in by).strip() or _model(r)
                out.setdefault(name, []).append((r["vars"][x], _m(r, "test_acc"), _m(r, "best_val_acc")))
        return out

    def group_transfer_lr(self, runs: list[dict], base) -> None:
        """Accuracy against learning rate."""
        self.doc.figures([(self.plot("transfer_lr", _plot_lines, self._series(runs, "lr", ("model", "strategy")),
                                     xlabel="learning rate (log scale)", title="accuracy vs learning rate"),
                           f"Accuracy vs learning rate, {self.setting(runs)}.")])

    def group_fractions(self, runs: list[dict], base) -> None:
        """Accuracy against training-data fraction, one line per model."""
        self.doc.figures([(self.plot("fractions", _plot_lines, self._series(runs, "fraction", ("model",)),
                                     xlabel="share of the training images (log scale)",
                                     title="accuracy vs training-data fraction", xfmt=lambda f: _var("fraction", f)),
                           f"Accuracy vs share of training data, {self.setting(runs)}.")])

    def group_regularization(self, runs: list[dict], base) -> None:
        """Change in accuracy of each option against the baseline run."""
        if not base:
            return
        rs = [r for r in runs if r is not base]
        opts = [str(r["vars"].get("option")) for r in rs]

        def pp(d: float | None) -> float | None:
            return d * 100 if _num(d) else None

        series = {"Δ test acc": [pp(_delta(_m(r, "test_acc"), _m(base, "test_acc"))) for r in rs],
                  "Δ best val acc": [pp(_delta(_val(r), _val(base))) for r in rs]}
        img = self.plot("regularization", _plot_grouped, opts, series, ylabel="change vs baseline (pp)",
                        title="regularization options vs baseline", band=self.noise * 100, horizontal=True)
        self.doc.figures([(img, f"Change in accuracy vs the baseline run; grey band: within noise "
                                f"(±{self.noise * 100:.1f} pp), {self.setting(runs)}.")])

    def group_imbalance(self, runs: list[dict], base) -> None:
        """Per-class recall table (classes x remedies) and grouped bars."""
        runs = [r for r in runs if _recalls(r)]
        if not runs:
            return
        classes = list(dict.fromkeys(c for r in runs for c in _recalls(r)))
        names = [self.imb_name(r, runs) for r in runs]
        self.doc.para("Test recall per class:")
        self.doc.table([("class", str, None)] + [(n, f_acc, None) for n in names],
                       [[c] + [_recalls(r).get(c) for r in runs] for c in classes])
        series = {n: [_recalls(r).get(c) for c in classes] for n, r in zip(names, runs)}
        self.doc.figures([(self.plot("imbalance", _plot_grouped, classes, series, ylabel="test recall",
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
            d.figures([(self.plot("corruptions_mean", _plot_severity, cor),
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
        scratch = [r for r in self.done if _arch(r) == "scratch_cnn"]
        if scratch:
            picks.setdefault(scratch[0]["name"], (scratch[0], "best from-scratch run"))
        for r in self.done:
            if (r.get("files") or {}).get("gradcam_grid"):
                picks.setdefault(r["name"], (r, "has a Grad-CAM analysis"))
        d.heading(2, "Per-model detail")
        for r, why in picks.values():
            d.heading(3, r["label"])
            d.para(f"{why[0].upper() + why[1:]}: {_model(r)} {_mode(r)}, {_init(r)}, {self.setting([r])}; best val acc "
                   f"{f_acc(_m(r, 'best_val_acc'))} at epoch {f_g(_m(r, 'best_epoch') or '?')}, test acc "
                   f"{f_acc(_m(r, 'test_acc'))}, macro F1 {f_acc(_f1(r))}"
                   + (f" (means over seeds {', '.join(map(str, r['seeds']))}; the figures below are of one of them)"
                      if r.get("seeds") else "") + f". Run folder `{r.get('run_dir') or '?'}`.")
            rec = r.get("eval") and (r["eval"].get("per_class") or {})
            if rec:
                names = list(_recalls(r)) or [k for k in rec if k not in ("accuracy", "macro avg", "weighted avg")]
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
