"""Reports built from a run's long table: Markdown and self-contained HTML, with Pareto plots."""

from __future__ import annotations

from pathlib import Path

from bench.report import html, markdown
from bench.report.document import build


def write_report(run_dir: Path, out_dir: Path, formats: tuple[str, ...] = ("md", "html")) -> list[Path]:
    """Write out_dir/index.md and/or index.html (plots as PNGs beside them); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = build(Path(run_dir), out_dir)
    written = []
    if "md" in formats:
        path = out_dir / "index.md"
        path.write_text(markdown.render(blocks, out_dir), encoding="utf-8")
        written.append(path)
    if "html" in formats:
        path = out_dir / "index.html"
        path.write_text(html.render(blocks), encoding="utf-8")
        written.append(path)
    return written
