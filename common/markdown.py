"""Markdown text: the small Markdown subset the report renders as HTML."""
from __future__ import annotations

import html
import re


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
    rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in block]
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
