"""Static HTML QA pages with PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Section:
    """One heading with figures (PNG names relative to the page) and a table of rows."""

    title: str
    figures: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    text: str = ""


def save_figure(fig: plt.Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def write_page(path: Path, title: str, sections: list[Section]) -> Path:
    """Write the page; figures must live in ``path.parent / <figure dir>``."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
             "tr.bad{background:#fdd}img{max-width:48%;margin:4px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        for fig in s.figures:
            parts.append(f"<img src='{html.escape(fig)}' alt='{html.escape(fig)}'>")
        if s.rows:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in s.columns)
                         + "</tr>")
            for row in s.rows:
                bad = any(isinstance(v, str) and v.startswith("failed") for v in row)
                parts.append(f"<tr{' class=bad' if bad else ''}>"
                             + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
