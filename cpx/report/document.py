"""A report as data (sections of paragraphs, tables and figures) rendered to Markdown or to one
self-contained HTML page, and the record of where each of its numbers came from.

Every number a report shows is a :class:`Fact`: its value, the text printed, the ledger cells it
was computed from (:class:`Ref`) and how (``value``, ``diff``, ``mean``, ...). Tests check each
fact against the ledger and that the rendered text holds no number that is not a fact.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union


@dataclass(frozen=True)
class Ref:
    """One ledger cell: ``table`` row ``key`` (a run id, validation id, submission name, score id,
    sweep name; ``history`` for a run's history.json) and its ``column``, with the value read."""

    table: str
    key: Any
    column: str
    value: Any


@dataclass(frozen=True)
class Fact:
    value: Any
    text: str
    refs: tuple[Ref, ...]
    how: str
    detail: Optional[dict] = None


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


Block = Union[Paragraph, Table, Figure]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, block: Block) -> Block:
        self.blocks.append(block)
        return block

    def text(self, text: str) -> None:
        self.blocks.append(Paragraph(text))


@dataclass
class Document:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def fact(self, value: Any, text: str, refs: Sequence[Ref] = (), how: str = "value",
             detail: Optional[dict] = None) -> str:
        """Record a number and return the text to print for it."""
        self.facts.append(Fact(value, text, tuple(refs), how, detail))
        return text

    # ------------------------------------------------------------------ Markdown

    def to_markdown(self, base: Optional[Path] = None) -> str:
        out = [f"# {self.title}", ""]
        if self.subtitle:
            out += [self.subtitle, ""]
        for s in self.sections:
            out += [f"## {s.title}", ""]
            for b in s.blocks:
                if isinstance(b, Paragraph):
                    out += [b.text, ""]
                elif isinstance(b, Table):
                    if b.caption:
                        out += [b.caption, ""]
                    out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
                    out.append("|" + "|".join("---" for _ in b.header) + "|")
                    for row in b.rows:
                        out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
                    out.append("")
                elif isinstance(b, Figure):
                    rel = b.path.relative_to(base) if base is not None and b.path.is_relative_to(base) else b.path
                    out += [f"![{b.caption}]({rel.as_posix()})", "", f"*{b.caption}*", ""]
        return "\n".join(out).rstrip() + "\n"

    # ------------------------------------------------------------------ HTML

    def to_html(self) -> str:
        """One page, figures inlined as data URIs: it can be mailed or archived alone."""
        parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_h(self.title)}</title>",
                 f"<style>{_CSS}</style></head><body>", f"<h1>{_h(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f"<p class=\"sub\">{_inline(self.subtitle)}</p>")
        toc = "".join(f"<li><a href=\"#s{i}\">{_h(s.title)}</a></li>" for i, s in enumerate(self.sections))
        parts.append(f"<nav><ol>{toc}</ol></nav>")
        for i, s in enumerate(self.sections):
            parts.append(f"<section id=\"s{i}\"><h2>{_h(s.title)}</h2>")
            for b in s.blocks:
                if isinstance(b, Paragraph):
                    parts.append(f"<p>{_inline(b.text)}</p>")
                elif isinstance(b, Table):
                    cap = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
                    head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
                    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
                    parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
                elif isinstance(b, Figure):
                    data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
                    parts.append(f"<figure><img alt=\"{_h(b.caption)}\" src=\"data:image/png;base64,{data}\">"
                                 f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
            parts.append("</section>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _h(text: str) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """Escape, then the little Markdown the report uses: **bold**, *italic* and `code`."""
    import re

    out = _h(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    return out


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#1d2125;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #dde1e6;padding-bottom:.2em;margin-top:2em}
.sub{color:#57606a}nav ol{columns:2;color:#57606a}
table{border-collapse:collapse;margin:.8em 0 1.4em;font-size:.9em;width:100%}
caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #d0d7de;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f3f5f7}tbody tr:nth-child(even){background:#fafbfc}
td{font-variant-numeric:tabular-nums}
code{background:#f3f5f7;padding:.05em .3em;border-radius:3px;font-size:.92em}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #e1e4e8}
figcaption{color:#57606a;font-size:.9em}
"""
