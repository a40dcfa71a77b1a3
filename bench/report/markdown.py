"""Render report blocks as Markdown (images as relative PNG links)."""

from __future__ import annotations

import os
from pathlib import Path


def render(blocks: list[tuple], out_dir: Path) -> str:
    parts = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"{'#' * int(kind[1])} {block[1]}")
        elif kind == "p":
            parts.append(block[1])
        elif kind == "table":
            header, body = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
            parts.append("\n".join(lines))
        elif kind == "img":
            parts.append(f"![{block[2]}]({os.path.relpath(block[1], out_dir)})")
        elif kind == "list":
            parts.append("\n".join(f"- {item}" for item in block[1]))
    return "\n\n".join(parts) + "\n"
