"""The report's blocks as one self-contained HTML page: inline CSS, plots as base64 data URIs."""

from __future__ import annotations

import base64
from html import escape

from bench.report.markdown import Block, Bullets, Heading, Image, Paragraph, Table

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1500px;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h4{margin:1.6em 0 0.4em}p{max-width:1100px}
table{border-collapse:collapse;font-size:13px;margin:0.8em 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom;min-width:4em}
td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}
td:nth-child(2){white-space:normal;min-width:14em;max-width:30em}
table.flags td:last-child,table.answer td:last-child{text-align:left;color:#a00;white-space:normal;min-width:12em}
tr:nth-child(even) td{background:#fafafa}
table.answer{font-size:14px}
table.answer td:nth-child(4),table.answer td:nth-child(5),table.answer td:nth-child(6){font-weight:600}
p.pick{background:#eef6ee;border-left:4px solid #3a7d44;padding:0.6em 0.9em;font-size:15px}
.plots{display:flex;flex-wrap:wrap;gap:0.5em 1em;align-items:flex-start}
img{max-width:660px;width:100%;border:1px solid #eee}
"""


def render_html(blocks: list[Block]) -> str:
    """One HTML page with no external assets; every text is escaped. Consecutive plots sit side by side."""
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "compbench report")
    parts: list[str] = []
    images: list[str] = []
    for block in blocks:
        if isinstance(block, Image):
            images.append(_block(block))
            continue
        if images:
            parts.append('<div class="plots">' + "".join(images) + "</div>")
            images = []
        parts.append(_block(block))
    if images:
        parts.append('<div class="plots">' + "".join(images) + "</div>")
    body = "\n".join(parts)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p{_class(block.kind)}>{escape(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{escape(cell)}</th>" for cell in block.header)
        rows = "\n".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in block.rows)
        return f"<table{_class(block.kind)}><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>"
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        return f'<img alt="{escape(block.alt)}" src="data:image/png;base64,{data}">'
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def _class(kind: str) -> str:
    return f' class="{escape(kind)}"' if kind else ""
