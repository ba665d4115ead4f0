"""The report's two documents built side by side: a self-contained HTML page and a Markdown file, same content."""
from __future__ import annotations

import html
import re
from typing import Callable

from common.formatting import is_num
from common.markdown import inline, markdown_table, markdown_to_html, slug

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


class Doc:
    """Builds the HTML page and the Markdown file side by side, so both carry the same content."""

    TOC = "\0toc\0"

    def __init__(self) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def heading(self, level: int, text: str) -> None:
        """A heading with an anchor; level 2 goes into the contents."""
        anchor = base = slug(text)
        while anchor in self.ids:
            anchor = f"{base}-{len(self.ids)}"
        self.ids.add(anchor)
        if level == 2:
            self.toc.append((anchor, text))
        self.html.append(f'<h{level} id="{anchor}">{inline(text)}</h{level}>')
        self.md.append(f"{'#' * level} {text}\n")

    def para(self, text: str) -> None:
        """A paragraph; `code` and **bold** are rendered."""
        self.html.append(f"<p>{inline(text)}</p>")
        self.md.append(text + "\n")

    def bullets(self, items: list[str]) -> None:
        """A bullet list."""
        if items:
            self.html.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            self.md.append("\n".join(f"- {i}" for i in items) + "\n")

    def box(self, cls: str, title: str, items: list[str]) -> None:
        """A coloured box with a title and a bullet list."""
        self.html.append(f'<div class="box {cls}"><p class="box-title">{inline(title)}</p>')
        self.md.append(f"**{title}**\n")
        self.bullets(items)
        self.html.append("</div>")

    def table(self, cols: list[tuple[str, Callable, str | None]], rows: list[list]) -> None:
        """cols are (header, formatter, 'max'/'min'/None); rows hold raw values; the best per column is marked."""
        numeric = [any(is_num(r[i]) for r in rows) and all(is_num(r[i]) or r[i] is None for r in rows)
                   for i in range(len(cols))]
        best = []
        for i, (_, _, how) in enumerate(cols):
            vals = [r[i] for r in rows if is_num(r[i])]
            best.append((max if how == "max" else min)(vals) if how and len(vals) > 1 and len(set(vals)) > 1 else None)
        head = "".join(f'<th{" class=n" if n else ""}>{html.escape(h)}</th>' for n, (h, _, _) in zip(numeric, cols))
        body, md = [], []
        for r in rows:
            cells, mdc = [], []
            for i, (_, fmt, _) in enumerate(cols):
                text, win = fmt(r[i]), best[i] is not None and r[i] == best[i]
                cls = " ".join(c for c, on in (("n", numeric[i]), ("best", win)) if on)
                cells.append(f'<td{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{html.escape(text)}</td>')
                mdc.append(f"**{text}**" if win else text)
            body.append("<tr>" + "".join(cells) + "</tr>")
            md.append(mdc)
        self.html.append(f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>')
        self.md.append(markdown_table([h for h, _, _ in cols], md, "".join("r" if n else "l" for n in numeric)) + "\n")

    def figures(self, figs: list[tuple[str | None, str]], cols: int = 1, narrow: bool = False) -> None:
        """Images (paths relative to the report) with captions; each links to the full-size file."""
        figs = [(src, cap) for src, cap in figs if src]
        if not figs:
            return
        items = "".join(f'<figure><a href="{html.escape(s)}"><img src="{html.escape(s)}" alt="{html.escape(c)}" '
                        f'loading="lazy"></a><figcaption>{inline(c)}</figcaption></figure>' for s, c in figs)
        cls = "figs" + (" c2" if cols == 2 and len(figs) > 1 else "") + (" narrow" if narrow else "")
        self.html.append(f'<div class="{cls}">{items}</div>')
        self.md.append("\n\n".join(f"![{c}]({s})" for s, c in figs) + "\n")

    def markdown(self, text: str, shift: int) -> None:
        """Embed a Markdown document, headings moved down by shift levels."""
        self.html.append(f'<div class="md">{markdown_to_html(text, shift)}</div>')
        self.md.append(re.sub(r"(?m)^(#{1,6})(?=\s)", lambda m: "#" * min(6, len(m[1]) + shift), text).strip() + "\n")

    def code(self, summary: str, text: str) -> None:
        """A collapsible code block."""
        self.html.append(f"<details><summary>{inline(summary)}</summary><pre>{html.escape(text)}</pre></details>")
        self.md.append(f"{summary}\n\n```bash\n{text}\n```\n")

    def render(self, title: str) -> tuple[str, str]:
        """(HTML page, Markdown text)."""
        toc_html = ('<nav class="toc"><strong>Contents</strong><ol>' + "".join(
            f'<li><a href="#{a}">{inline(t)}</a></li>' for a, t in self.toc) + "</ol></nav>")
        toc_md = "**Contents**\n\n" + "\n".join(f"{i}. [{t}](#{a})" for i, (a, t) in enumerate(self.toc, 1)) + "\n"
        body = "\n".join(self.html).replace(self.TOC, toc_html)
        page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
                f"<body><main>\n{body}\n</main></body></html>\n")
        return page, "\n".join(self.md).replace(self.TOC, toc_md)
