"""Reports built from a run's long table: Markdown with PNG plots, and one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

from bench.report.html import render_html
from bench.report.markdown import Image, build_document, render_markdown
from bench.results.store import ROWS_FILE

FORMATS = ("md", "html")


def write_report(run_dir: Path, out_dir: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write the report of `run_dir` into `out_dir`.

    Args:
        run_dir: a run folder (results/<run_id>/) or its rows.jsonl.
        out_dir: where index.md (with its PNG plots beside it) and index.html go; created if absent.
        formats: any of "md" and "html".

    Returns:
        The paths written: the pages first (index.md, index.html), then the PNGs of the Markdown page.
        The HTML page embeds its plots, so an HTML-only report writes no PNG.
    """
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(f"formats: expected one or more of {', '.join(FORMATS)}, got {tuple(formats)!r}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if run_dir.name == ROWS_FILE:
        run_dir = run_dir.parent
    blocks = build_document(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pages, images = [], []
    if "md" in formats:
        pages.append(out_dir / "index.md")
        pages[-1].write_text(render_markdown(blocks), encoding="utf-8")
        for block in blocks:
            if isinstance(block, Image):
                images.append(out_dir / block.name)
                images[-1].write_bytes(block.png)
    if "html" in formats:
        pages.append(out_dir / "index.html")
        pages[-1].write_text(render_html(blocks), encoding="utf-8")
    return pages + images
