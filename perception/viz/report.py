"""A self-contained HTML report that links pictures (no scripts, no external resources).

Pictures are linked by paths relative to the report's directory, so the folder can be zipped, copied or
served as it is. Every string is HTML-escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from perception.io.common import atomic_write_text

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; background: #15171b;
       color: #e6e6e6; max-width: 1400px; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #333; padding-bottom: 4px; margin-top: 36px; }
a { color: #7fb2ff; } figure { margin: 16px 0; } img { max-width: 100%; border: 1px solid #333; }
figcaption { color: #aaa; font-size: 14px; margin-top: 4px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; display: block; overflow-x: auto; }
th, td { border: 1px solid #333; padding: 4px 8px; text-align: left; } th { background: #1f2227; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #c9b27a; }
"""


@dataclass
class Figure:
    """A picture: ``path`` relative to the report directory, a title and a caption."""

    path: str
    title: str
    caption: str = ""


@dataclass
class Table:
    """A table of strings (numbers are right-aligned when their cell parses as a float)."""

    header: list[str]
    rows: list[list[str]]
    title: str = ""


@dataclass
class Section:
    """A heading with text paragraphs, tables, figures and notes, in that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table_html(table: Table) -> str:
    esc = html.escape
    parts = [f"<h3>{esc(table.title)}</h3>"] if table.title else []
    parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.header) + "</tr>")
    for row in table.rows:
        cells = "".join(f'<td class="num">{esc(c)}</td>' if _is_number(c) else f"<td>{esc(c)}</td>" for c in row)
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def render_html(title: str, sections: Sequence[Section], intro: str = "") -> str:
    """The report as one HTML document."""
    esc = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if intro:
        out.append(f"<p>{esc(intro)}</p>")
    if len(sections) > 1:
        out.append("<ul>" + "".join(f'<li><a href="#s{k}">{esc(s.title)}</a></li>' for k, s in enumerate(sections)))
        out.append("</ul>")
    for k, section in enumerate(sections):
        out.append(f'<h2 id="s{k}">{esc(section.title)}</h2>')
        out.extend(f"<p>{esc(p)}</p>" for p in section.paragraphs)
        out.extend(_table_html(t) for t in section.tables)
        for fig in section.figures:
            src = esc(fig.path, quote=True)
            out.append(
                f'<figure><h3>{esc(fig.title)}</h3><a href="{src}"><img src="{src}" alt="{esc(fig.title, quote=True)}">'
                f"</a><figcaption>{esc(fig.caption)}</figcaption></figure>"
            )
        out.extend(f'<p class="note">{esc(n)}</p>' for n in section.notes)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(path: str | os.PathLike[str], title: str, sections: Sequence[Section], intro: str = "") -> Path:
    """Write :func:`render_html` atomically to ``path``; return it."""
    return atomic_write_text(path, render_html(title, sections, intro))
