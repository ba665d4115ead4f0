"""Markdown text: the project's one pipe-table writer, and the small Markdown subset the report renders as HTML."""
from __future__ import annotations

import html
import re
from typing import Sequence

_CELL_SPLIT = re.compile(r"(?<!\\)\|")  # a cell boundary: a pipe that markdown_table did not escape


def _cell(value) -> str:
    """A value as table-cell text; a pipe is escaped so it cannot end the cell."""
    return str(value).replace("|", "\\|")


def markdown_table(headers: Sequence, rows: Sequence[Sequence], align: str | None = None) -> str:
    """A pipe table without a trailing newline; align has one letter per column, "l" or "r" (default all "l")."""
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} columns")
    lines = ["| " + " | ".join(map(_cell, headers)) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows])


def slug(text: str) -> str:
    """GitHub-style heading anchor, so the Markdown contents links work too."""
    return re.sub(r"[^\w\- ]", "", text.lower()).strip().replace(" ", "-") or "section"


def inline(text: str) -> str:
    """Escape text, then render `code` and **bold**."""
    out = []
    for part in re.split(r"(`[^`\n]+`)", text):
        if len(part) > 1 and part[0] == part[-1] == "`":
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)


def _table_html(block: list[str]) -> str:
    """A pipe table (header and alignment row optional) as a scrollable HTML table; right-aligned columns get .n."""
    rows = [[c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(r.strip().strip("|"))] for r in block]
    sep = len(rows) > 1 and all(re.fullmatch(r":?-+:?", c) for c in rows[1])
    right = [c.endswith(":") for c in rows[1]] if sep else []
    head, body = (rows[0], rows[2:]) if sep else ([], rows)

    def cells(row: list[str], tag: str) -> str:
        return "".join(f'<{tag}{" class=n" if i < len(right) and right[i] else ""}>{inline(c)}</{tag}>'
                       for i, c in enumerate(row))
    return ('<div class="scroll"><table>' + (f"<tr>{cells(head, 'th')}</tr>" if head else "")
            + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body) + "</table></div>")


def markdown_to_html(text: str, shift: int = 0) -> str:
    """Headings (moved down by shift levels), bullet lists, pipe tables and paragraphs; all text escaped."""
    out: list[str] = []
    block: list[str] = []
    kind = ""

    def flush() -> None:
        if kind == "p":
            out.append(f"<p>{inline(' '.join(block))}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block) + "</ul>")
        elif kind == "table":
            out.append(_table_html(block))
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
            out.append(f"<h{level}>{inline(head[2])}</h{level}>")
        elif new:
            block.append(s[2:].strip() if new == "ul" else s)
    flush()
    return "\n".join(out)
