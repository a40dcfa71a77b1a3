"""Reports from hand-made runs: tables, flags, deltas, notes, plots, HTML, compare, empty runs."""

import random
from dataclasses import asdict

import pandas as pd
import pytest

from bench.report import write_report
from bench.report.compare import compare_runs
from bench.report.plots import pareto_front, pareto_plot
from bench.report.tables import column_for, columns_for, render_table, sig3, variant_table
from bench.results import Row, append_rows, load, write_manifest

SMOLLM_NOTE = "weights dequantized from the GGUF Q4_1 file: the baseline is already 4-bit-quantized"
XSS = "bitsandbytes 4-bit needs CUDA <script>alert(1)</script>"


def rows_of(cell, compressor, params_json="{}", task="bbc-topic", model="minilm-l6", device="cpu", **metrics):
    """Rows of one cell; each metric is a value or (value, ci_low, ci_high, n)."""
    units = {"accuracy": ("fraction", True), "perplexity": ("ppl", False), "size_bytes": ("bytes", False),
             "latency_p50": ("ms", False), "speedup": ("x", True), "params": ("count", None)}
    out = []
    for metric, spec in metrics.items():
        value, low, high, n = spec if isinstance(spec, tuple) else (spec, None, None, None)
        unit, up = units[metric]
        out.append(Row(run_id="r1", cell_id=cell, task=task, model=model, compressor=compressor, params=params_json,
                       stage=int(compressor != "identity"), device=device, runtime="torch", threads=2,
                       metric=metric, value=value, unit=unit, higher_is_better=up, n=n, ci_low=low, ci_high=high))
    return out


def failed(cell, compressor, status, reason, params="{}", device="cpu"):
    return [Row(run_id="r1", cell_id=cell, task="bbc-topic", model="minilm-l6", compressor=compressor, params=params,
                stage=1, device=device, runtime=None, threads=2, metric="cell", value=None, unit=None,
                higher_is_better=None, status=status, reason=reason)]


def classification_rows():
    return (
        rows_of("base", "identity", accuracy=(0.969, 0.954, 0.981, 639), size_bytes=90.4e6, params=22.7e6,
                latency_p50=(151.0, None, None, 20), speedup=(1.0, 0.97, 1.03, 20))
        + rows_of("int8", "int8-dynamic", '{"backend":"onnxruntime"}', accuracy=(0.966, 0.950, 0.979, 639),
                  size_bytes=22.9e6, latency_p50=(77.0, None, None, 40), speedup=(1.95, 1.90, 2.01, 20))
        + rows_of("mask", "prune-magnitude", '{"ratio":0.5}', accuracy=(0.962, 0.946, 0.976, 639),
                  size_bytes=90.1e6, latency_p50=(150.0, None, None, 20), speedup=(1.01, 0.98, 1.04, 20))
        + rows_of("bf16", "cast", '{"dtype":"bf16"}', accuracy=(0.969, 0.954, 0.981, 639), size_bytes=45.3e6,
                  latency_p50=(290.0, None, None, 20), speedup=(0.52, 0.50, 0.55, 20))
        # below 1 but its interval reaches 1: noise, not "slower"; 2.9 pt down is a quality loss
        + rows_of("svd", "lowrank-svd", '{"rank":64}', accuracy=(0.940, 0.921, 0.958, 639), size_bytes=60.0e6,
                  latency_p50=(155.0, None, None, 20), speedup=(0.97, 0.93, 1.02, 20))
        + failed("nf4", "bnb-nf4", "skipped", XSS)
        + failed("static", "int8-static", "error", "RuntimeError: calibration failed")
        + failed("gpu", "identity", "skipped", "no CUDA device on this machine", device="cuda"))


def lm_rows():
    lm = {"task": "lm-bbc", "model": "smollm2-135m"}
    return (rows_of("lm-base", "identity", **lm, perplexity=(25.6, 25.1, 26.2, 40960), size_bytes=538e6,
                    latency_p50=(740.0, None, None, 10))
            + rows_of("lm-int8", "int8-dynamic", '{"backend":"torch"}', **lm, perplexity=(89.0, 86.0, 92.0, 40960),
                      size_bytes=170e6, latency_p50=(520.0, None, None, 10), speedup=(1.4, 1.3, 1.5, 10))
            + rows_of("lm-fp16", "cast", '{"dtype":"fp16"}', **lm, perplexity=(25.7, 25.2, 26.3, 40960),
                      size_bytes=270e6, latency_p50=(730.0, None, None, 10), speedup=(1.0, 0.96, 1.04, 10)))


MANIFEST = {"run_id": "r1", "git_commit": "abc1234", "started": "2026-11-22T10:00:00+00:00",
            "finished": "2026-11-22T11:00:00+00:00", "matrix": {"name": "default", "tasks": [{}, {}],
                                                                 "compressors": [{}] * 6, "devices": ["cpu", "cuda"]},
            "versions": {"torch": "2.13.0", "transformers": "4.57.6", "onnxruntime": "1.31.0", "numpy": "2.0"},
            "machine": {"cpu": "Intel Xeon", "cores": 2, "threads": 2},
            "model_notes": {"smollm2-135m": [SMOLLM_NOTE], "minilm-l6": []}}


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "results" / "r1"
    run_dir.mkdir(parents=True)
    append_rows(run_dir, classification_rows())
    append_rows(run_dir, lm_rows())
    write_manifest(run_dir, MANIFEST)
    return run_dir


def table_lines(md: str, section: str) -> dict[str, list[str]]:
    """Rows of the first table after `section`, by variant label, as lists of cell texts."""
    text = md[md.index(section):]
    out = {}
    for line in text.splitlines()[2:]:
        if line.startswith("| ") and not line.startswith("| variant"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out[cells[0]] = cells
        elif out and not line.startswith("|"):
            break
    return out


def test_markdown_tables_flags_and_deltas(run, tmp_path):
    paths = write_report(run, tmp_path / "out", ("md",))
    md = paths[0].read_text(encoding="utf-8")
    assert "# compbench report: r1" in md and "abc1234" in md and "torch 2.13.0" in md and "numpy" not in md
    assert "interleaved in the same process" in md
    assert "accuracy (%) ↑" in md and "size on disk (MB) ↓" in md and "speed-up (x) ↑" in md
    assert "perplexity ↓" in md and "p50 latency (ms) ↓" in md

    rows = table_lines(md, "### bbc-topic on cpu")
    base, int8 = rows["identity (baseline)"], rows["int8-dynamic (backend=onnxruntime)"]
    assert "96.9 [95.4, 98.1]" in base and base[-1] == "" and "smaller" not in " ".join(base)
    assert f"96.6 [95.0, 97.9] ({(0.966 - 0.969) * 100:+.1f} pt)" in int8  # -0.3 pt
    assert f"22.9 ({90.4 / 22.9:.2f}x smaller)" in int8  # 3.95x
    assert "1.95x [1.90, 2.01]" in int8 and int8[-1] == ""
    assert rows["prune-magnitude (ratio=0.5)"][-1] == "no real size gain"
    assert rows["cast (dtype=bf16)"][-1] == "slower than baseline"
    assert "±0.0 pt" in " ".join(rows["cast (dtype=bf16)"])
    assert rows["lowrank-svd (rank=64)"][-1] == "quality loss"
    assert rows["bnb-nf4"][-1].startswith("skipped: bitsandbytes 4-bit needs CUDA \\<script>")
    assert rows["int8-static"][-1] == "error: RuntimeError: calibration failed"
    assert list(rows)[-2:] == ["bnb-nf4", "int8-static"]  # failures last, not dropped
    assert "accuracy: n = 639 examples" in md and "latency: n = 20–40 timed iterations" in md

    assert table_lines(md, "### bbc-topic on cuda")["identity"][-1] == "skipped: no CUDA device on this machine"
    lm = table_lines(md, "### lm-bbc on cpu")
    assert lm["int8-dynamic (backend=torch)"][-1] == "quality loss"
    assert f"89.0 [86.0, 92.0] ({(89.0 / 25.6 - 1) * 100:+.1f}%)" in lm["int8-dynamic (backend=torch)"]
    assert lm["cast (dtype=fp16)"][-1] == "" and "perplexity: n = 40,960 tokens" in md

    lm_section = md[md.index("## lm-bbc"):]
    assert SMOLLM_NOTE in lm_section and SMOLLM_NOTE not in md[:md.index("## lm-bbc")]
    failures = md[md.index("### bbc-topic: skipped and failed cells"):md.index("## lm-bbc")]
    assert "bnb-nf4 on cpu (minilm-l6): skipped: bitsandbytes 4-bit needs CUDA" in failures
    assert "int8-static on cpu (minilm-l6): error: RuntimeError: calibration failed" in failures

    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 4  # (accuracy, perplexity) x (size, latency) on cpu; cuda has no points
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png.name})" in md


def test_variant_table_numbers_and_flag_edges(run):
    frame = load(run)
    table = variant_table(frame[(frame.task == "bbc-topic") & (frame.device == "cpu")]).set_index("label")
    assert table.loc["int8-dynamic (backend=onnxruntime)", "size_bytes:delta"] == pytest.approx(90.4 / 22.9)
    assert table.loc["lowrank-svd (rank=64)", "accuracy:delta"] == pytest.approx(-2.9)
    assert table.loc["identity", "is_baseline"] and not table.loc["cast (dtype=bf16)", "is_baseline"]

    # exactly at the thresholds: 95% of the bytes is "no gain"; exactly 1 pt down is not a loss
    edge = (rows_of("b", "identity", accuracy=0.97, size_bytes=100.0, speedup=1.0)
            + rows_of("v", "x", accuracy=0.96, size_bytes=95.0, speedup=0.96)
            + rows_of("w", "y", accuracy=0.9589, size_bytes=94.9, speedup=0.94))
    edges = variant_table(pd.DataFrame([asdict(r) for r in edge])).set_index("label")
    assert edges.loc["x", "flags"] == ["no real size gain"]  # 0.96 without an interval is not slower
    assert edges.loc["y", "flags"] == ["slower than baseline", "quality loss"]


def test_render_table_scales_units(run):
    frame = load(run)
    group = frame[(frame.task == "lm-bbc") & (frame.device == "cpu")]
    header, body = render_table(variant_table(group), columns_for(group))
    assert header[0] == "variant" and "size on disk (MB) ↓" in header and header[-1] == "flags"
    assert body[0][header.index("size on disk (MB) ↓")] == "538"
    assert [sig3(x) for x in (4.512e-6, 0.012345, 1.2345, 25.64, 151.2, 12345.6)] == [
        "4.51e-06", "0.0123", "1.23", "25.6", "151", "12,346"]


def test_html_is_self_contained_and_escaped(run, tmp_path):
    paths = write_report(run, tmp_path / "html-only", ("html",))
    assert [p.name for p in paths] == ["index.html"]  # the plots are inside the page
    html = paths[0].read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 4
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered and "<link" not in lowered
    assert "<script" not in lowered and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert SMOLLM_NOTE in html and "slower than baseline" in html and "<table>" in html


def test_pareto_front_on_hand_made_points():
    points = [(10, 0.90), (20, 0.95), (30, 0.94), (40, 0.97), (40, 0.98), (50, 0.98), (5, 0.80), (20, 0.95)]
    # (30, .94) is beaten by (20, .95); (40, .97) by (40, .98); (50, .98) ties it at higher cost; idx 7 repeats 1
    assert pareto_front(points, higher_is_better=True) == [6, 0, 1, 4]
    assert pareto_front([(1, 30.0), (2, 25.0), (3, 26.0), (4, 20.0)], higher_is_better=False) == [0, 1, 3]
    assert pareto_front([]) == []


def test_pareto_front_matches_the_definition():
    rng = random.Random(0)
    for _ in range(200):
        points = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(rng.randint(1, 9))]
        for up in (True, False):
            better = (lambda a, b: a >= b) if up else (lambda a, b: a <= b)
            expected = {i for i, (c, q) in enumerate(points)
                        if not any(c2 <= c and better(q2, q) and (c2, q2) != (c, q) for c2, q2 in points)}
            expected = {i for i in expected if points.index(points[i]) == i}  # first of duplicates
            assert set(pareto_front(points, up)) == expected


def test_pareto_plot_needs_two_points(run):
    frame = load(run)
    table = variant_table(frame[(frame.task == "bbc-topic") & (frame.device == "cpu")])
    quality, cost = column_for("accuracy", "fraction", True), column_for("size_bytes", "bytes", False)
    assert pareto_plot(table, quality, cost, "t")[:4] == b"\x89PNG"
    assert pareto_plot(table.head(1), quality, cost, "t") is None


def test_compare_shows_both_values_and_change(run, tmp_path):
    other = tmp_path / "results" / "r2"
    other.mkdir()
    append_rows(other, rows_of("int8", "int8-dynamic", '{"backend":"onnxruntime"}',
                               accuracy=(0.976, 0.962, 0.987, 639), size_bytes=22.9e6))
    write_manifest(other, {"run_id": "r2", "git_commit": "def5678"})
    text = compare_runs(run, other)
    assert "# r1 (A) vs r2 (B)" in text and "def5678" in text
    accuracy = next(x for x in text.splitlines() if "| int8-dynamic (backend=onnxruntime) | accuracy" in x)
    assert "96.6 [95.0, 97.9]" in accuracy and "97.6 [96.2, 98.7]" in accuracy
    assert f"{(0.976 - 0.966) * 100:+.1f} pt" in accuracy and "better, intervals overlap" in accuracy
    size = next(x for x in text.splitlines() if "| size on disk (MB)" in x)
    assert "| 22.9 | 22.9 | +0.0% |" in size
    assert "only in r1: identity on cpu (bbc-topic, minilm-l6): ok" in text
    assert "only in r1: bnb-nf4 on cpu (bbc-topic, minilm-l6): skipped (bitsandbytes" in text


def test_empty_run_says_nothing_yet(tmp_path):
    run_dir = tmp_path / "results" / "empty"
    run_dir.mkdir(parents=True)
    write_manifest(run_dir, {"run_id": "empty"})
    paths = write_report(run_dir, tmp_path / "out")
    md, html = paths[0].read_text(encoding="utf-8"), paths[1].read_text(encoding="utf-8")
    assert "Nothing measured yet" in md and "Nothing measured yet" in html and "<table" not in html
    bare = tmp_path / "bare"  # no manifest, no rows
    bare.mkdir()
    assert "Nothing measured yet" in write_report(bare, tmp_path / "out2", ("md",))[0].read_text(encoding="utf-8")
    assert "Nothing to compare" in compare_runs(run_dir, bare)


def test_unknown_format_is_a_value_error(run, tmp_path):
    with pytest.raises(ValueError, match="formats"):
        write_report(run, tmp_path / "out", ("pdf",))


def test_failed_baseline_and_long_reason(tmp_path):
    run_dir = tmp_path / "results" / "r3"
    run_dir.mkdir(parents=True)
    reason = "MemoryError: " + "x" * 300
    append_rows(run_dir, failed("base", "identity", "error", reason)
                + rows_of("int8", "int8-dynamic", accuracy=0.5, size_bytes=100.0, speedup=0.5))
    md = write_report(run_dir, tmp_path / "out", ("md",))[0].read_text(encoding="utf-8")
    rows = table_lines(md, "### bbc-topic on cpu")
    assert rows["int8-dynamic"][-1] == ""  # no baseline: no flags, no deltas
    assert "pt" not in rows["int8-dynamic"][2] and "No measured identity baseline for minilm-l6 on cpu" in md
    in_table = rows["identity"][-1]
    assert in_table.startswith("error: MemoryError: xxx") and in_table.endswith("…") and len(in_table) < 140
    assert reason in md  # the list below the table keeps the whole reason
