"""Reports from a hand-made run: flags, arrows, deltas, notes, skipped reasons, HTML self-contained."""

import pytest

from bench.report import write_report
from bench.report.compare import compare_runs
from bench.report.plots import pareto_front
from bench.results import Row, append_rows, write_manifest


def row(cell, compressor, metric, value, unit, up, params="{}", task="bbc-topic", model="m", **kw):
    return Row(run_id="r", cell_id=cell, task=task, model=model, compressor=compressor, params=params, stage=0,
               device="cpu", runtime="torch", threads=2, metric=metric, value=value, unit=unit, higher_is_better=up,
               **kw)


def variant(cell, compressor, accuracy, size, speed, params="{}"):
    return [row(cell, compressor, "accuracy", accuracy, "fraction", True, params, n=500, ci_low=accuracy - 0.01,
                ci_high=accuracy + 0.01),
            row(cell, compressor, "size_bytes", size, "bytes", False, params),
            row(cell, compressor, "latency_p50", 100 / speed, "ms", False, params, n=20),
            row(cell, compressor, "speedup", speed, "x", True, params, ci_low=speed * 0.97, ci_high=speed * 1.03)]


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "results" / "r"
    run_dir.mkdir(parents=True)
    rows = (variant("a", "identity", 0.96, 90e6, 1.0)
            + variant("b", "int8-dynamic", 0.955, 23e6, 2.0, '{"backend":"onnxruntime"}')
            + variant("c", "prune-magnitude", 0.95, 90e6, 1.0, '{"ratio":0.5}')
            + variant("d", "cast", 0.90, 45e6, 0.5, '{"dtype":"bf16"}')
            + [row("e", "bnb-nf4", "cell", None, None, None, status="skipped", reason="needs <script>CUDA</script>"),
               row("f", "weird", "cell", None, None, None, status="error", reason="RuntimeError: boom"),
               row("g", "identity", "perplexity", 25.0, "ppl", False, task="lm-bbc", model="smollm2-135m"),
               row("h", "int8-dynamic", "perplexity", 80.0, "ppl", False, task="lm-bbc", model="smollm2-135m")])
    append_rows(run_dir, rows)
    write_manifest(run_dir, {"run_id": "r", "model_notes": {"smollm2-135m": ["weights dequantized from GGUF Q4_1"]}})
    return run_dir


def test_markdown_has_arrows_deltas_and_flags(run, tmp_path):
    md = write_report(run, tmp_path / "out", ("md",))[0].read_text()
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "accuracy ↑" in md and "size ↓" in md and "speed-up ↑" in md
    int8 = lines["int8-dynamic (backend=onnxruntime)"]
    assert "-0.5 pt" in int8 and "3.91x smaller" in int8 and "2.00x" in int8
    assert "no real size gain" not in int8 and "slower" not in int8
    assert "no real size gain" in lines["prune-magnitude (ratio=0.5)"]
    cast = lines["cast (dtype=bf16)"]
    assert "slower than baseline" in cast and "quality loss" in cast
    assert "quality loss" in lines["int8-dynamic"]  # perplexity 25 -> 80
    assert "weights dequantized from GGUF Q4_1" in md
    assert "skipped" in md and "needs <script>CUDA</script>" in md and "RuntimeError: boom" in md
    assert "n = 500 examples" in md


def test_html_is_self_contained_and_escaped(run, tmp_path):
    html = write_report(run, tmp_path / "out", ("html",))[0].read_text()
    assert "data:image/png;base64," in html
    assert "src=\"http" not in html and "href=\"http" not in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_empty_run_says_so(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    write_manifest(run_dir, {"run_id": "empty"})
    md = write_report(run_dir, tmp_path / "out", ("md",))[0].read_text()
    assert "no rows" in md


def test_pareto_front():
    points = [(1, 0.90), (2, 0.95), (3, 0.94), (4, 0.97), (5, 0.97)]
    assert pareto_front(points, higher_is_better=True) == [0, 1, 3]
    assert pareto_front([(1, 30), (2, 25), (3, 26)], higher_is_better=False) == [0, 1]


def test_compare_shows_both_values_and_change(run, tmp_path):
    other = tmp_path / "results" / "r2"
    other.mkdir()
    append_rows(other, variant("b", "int8-dynamic", 0.965, 23e6, 2.0, '{"backend":"onnxruntime"}'))
    text = compare_runs(run, other)
    line = next(x for x in text.splitlines() if "| accuracy |" in x)
    assert "95.5%" in line and "96.5%" in line and "+1.0%" in line
