"""Reports from hand-made runs: the answer first (pick, Pareto table, plots), full tables, flags, per-class
recall, distillation gains and heat maps, chains stage by stage, absent devices, HTML, compare, empty runs."""

import json
import random
from dataclasses import asdict

import pandas as pd
import pytest
from matplotlib.text import Text

from bench.measure.catalog import sig3
from bench.report import write_report
from bench.report.answer import answer_for
from bench.report.compare import compare_runs
from bench.report.distill import gains, sweeps
from bench.report.plots import LABEL_GID, pareto_figure, pareto_plot
from bench.report.tables import column_for, columns_for, render_table, variant_table
from bench.results.store import Row, append_rows, load, write_manifest

SMOLLM_NOTE = "weights dequantized from the GGUF Q4_1 file: the baseline is already 4-bit-quantized"
XSS = "bitsandbytes 4-bit needs CUDA <script>alert(1)</script>"


UNITS = {"accuracy": ("fraction", True), "perplexity": ("ppl", False), "size_bytes": ("bytes", False),
         "latency_p50": ("ms", False), "speedup": ("x", True), "params": ("count", None),
         "accuracy_delta": ("fraction", True), "perplexity_change": ("fraction", False),
         "gain_vs_companion": ("fraction", True), "compress_seconds": ("s", False)}


def rows_of(cell, compressor, params_json="{}", task="bbc-topic", model="minilm-l6", device="cpu", stage=None,
            details=None, **metrics):
    """Rows of one cell; each metric is a value or (value, ci_low, ci_high, n); details: {metric: dict}."""
    out = []
    for metric, spec in metrics.items():
        value, low, high, n = (tuple(spec) + (None,))[:4] if isinstance(spec, tuple) else (spec, None, None, None)
        unit, up = UNITS[metric]
        extra = (details or {}).get(metric)
        out.append(Row(run_id="r1", cell_id=cell, task=task, model=model, compressor=compressor, params=params_json,
                       stage=int(compressor != "identity") if stage is None else stage, device=device,
                       runtime="torch", threads=2, metric=metric, value=value, unit=unit, higher_is_better=up, n=n,
                       ci_low=low, ci_high=high, details=json.dumps(extra) if extra else None))
    return out


def failed(cell, compressor, status, reason, params="{}", device="cpu"):
    return [Row(run_id="r1", cell_id=cell, task="bbc-topic", model="minilm-l6", compressor=compressor, params=params,
                stage=1, device=device, runtime=None, threads=2, metric="cell", value=None, unit=None,
                higher_is_better=None, status=status, reason=reason)]


def classification_rows():
    recall = {"business": 0.95, "sport": 1.0, "tech": 0.96}
    coverage = {"classes": {"business": 151, "sport": 152, "tech": 104}, "documents": 407}

    def paired(delta, low, high):
        return {"accuracy_delta": (delta, low, high, 639)}

    def acc(value, low, high, **changes):
        return {"details": {"accuracy": {"recall": {**recall, **changes}, "coverage": coverage}},
                "accuracy": (value, low, high, 639)}

    return (
        rows_of("base", "identity", **acc(0.969, 0.954, 0.981), size_bytes=90.4e6, params=22.7e6,
                latency_p50=(151.0, None, None, 20), speedup=(1.0, 0.97, 1.03, 20))
        + rows_of("int8", "int8-dynamic", '{"backend":"onnxruntime"}', **acc(0.966, 0.950, 0.979, business=0.94),
                  **paired(-0.003, -0.008, 0.002), size_bytes=22.9e6, latency_p50=(77.0, None, None, 40),
                  speedup=(1.95, 1.90, 2.01, 20))
        + rows_of("mask", "prune-magnitude", '{"ratio":0.5}', **acc(0.962, 0.946, 0.976),
                  **paired(-0.007, -0.012, -0.002), size_bytes=90.1e6, latency_p50=(150.0, None, None, 20),
                  speedup=(1.01, 0.98, 1.04, 20))
        + rows_of("bf16", "cast", '{"dtype":"bf16"}', **acc(0.969, 0.954, 0.981), **paired(0.0, -0.002, 0.002),
                  size_bytes=45.3e6, latency_p50=(290.0, None, None, 20), speedup=(0.52, 0.50, 0.55, 20))
        # 2.9 pt down is a quality loss; the tech class collapses (-8 pt) while the mean falls less
        + rows_of("svd", "lowrank-svd", '{"rank":64}', **acc(0.940, 0.921, 0.958, tech=0.88),
                  **paired(-0.029, -0.040, -0.018), size_bytes=60.0e6, latency_p50=(155.0, None, None, 20),
                  speedup=(0.97, 0.93, 1.02, 20))
        + rows_of("w4", "weight-only", '{"bits":4}', **acc(0.964, 0.948, 0.977), **paired(-0.005, -0.010, 0.0),
                  size_bytes=15.0e6, speedup=(0.60, 0.55, 0.65, 20))
        # the fastest of all, but 1.2 pt down: outside the default budget
        + rows_of("entropy", "int8-static", '{"method":"entropy"}', **acc(0.957, 0.940, 0.971),
                  **paired(-0.012, -0.020, -0.004), size_bytes=20.0e6, speedup=(3.0, 2.8, 3.2, 20))
        + failed("nf4", "bnb-nf4", "skipped", XSS)
        + failed("static", "int8-static", "error", "RuntimeError: calibration failed")
        + failed("gpu", "identity", "skipped", "no CUDA device on this machine", device="cuda")
        + failed("gpu-int8", "int8-dynamic", "skipped", "no CUDA device on this machine", device="cuda"))


def lm_rows():
    lm = {"task": "lm-bbc", "model": "smollm2-135m"}
    return (rows_of("lm-base", "identity", **lm, perplexity=(25.6, 25.1, 26.2, 80), size_bytes=538e6,
                    latency_p50=(740.0, None, None, 10), speedup=(1.0, 0.95, 1.05, 10))
            + rows_of("lm-int8", "int8-dynamic", '{"backend":"torch"}', **lm, perplexity=(89.0, 86.0, 92.0, 80),
                      perplexity_change=(2.48, 2.3, 2.6, 80), size_bytes=170e6, latency_p50=(520.0, None, None, 10),
                      speedup=(1.4, 1.3, 1.5, 10))
            + rows_of("lm-fp16", "cast", '{"dtype":"fp16"}', **lm, perplexity=(25.7, 25.2, 26.3, 80),
                      perplexity_change=(0.004, -0.001, 0.009, 80), size_bytes=270e6,
                      latency_p50=(730.0, None, None, 10), speedup=(1.0, 0.96, 1.04, 10)))


MANIFEST = {"run_id": "r1", "git_commit": "abc1234", "started": "2026-11-22T10:00:00+00:00",
            "finished": "2026-11-22T11:00:00+00:00", "matrix": {"name": "default", "tasks": [{}, {}],
                                                                 "compressors": [{}] * 6, "devices": ["cpu", "cuda"]},
            "versions": {"torch": "2.13.0", "transformers": "4.57.6", "onnxruntime": "1.31.0", "numpy": "2.0"},
            "machine": {"cpu": "Intel Xeon", "cores": 2, "threads": 2},
            "model_notes": {"smollm2-135m": [SMOLLM_NOTE], "minilm-l6": []}}


def make_run(tmp_path, name, rows, manifest=None):
    run_dir = tmp_path / "results" / name
    run_dir.mkdir(parents=True)
    append_rows(run_dir, rows)
    write_manifest(run_dir, manifest or {"run_id": name})
    return run_dir


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path, "r1", classification_rows() + lm_rows(), MANIFEST)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The Markdown page of the hand-made run and the paths written (built once: the tests only read it)."""
    tmp_path = tmp_path_factory.mktemp("report")
    run_dir = make_run(tmp_path, "r1", classification_rows() + lm_rows(), MANIFEST)
    paths = write_report(run_dir, tmp_path / "out", ("md",))
    return paths[0].read_text(encoding="utf-8"), paths


def table_lines(md: str, section: str, key: str = "variant") -> dict[str, list[str]]:
    """Rows of the first table after `section`, by the text of column `key`, as lists of cell texts."""
    text = md[md.index(section):]
    out, header = {}, None
    for line in text.splitlines():
        if line.startswith("| ") and header is None:
            header = [c.strip() for c in line.strip().strip("|").split(" | ")]
        elif line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            out[cells[header.index(key)]] = cells
        elif out and not line.startswith("|"):
            break
    return out


def test_each_task_opens_with_the_pick_and_the_pareto_table(report):
    md, _ = report
    section = md[md.index("### bbc-topic on cpu"):md.index("#### All variants: quality (bbc-topic on cpu)")]
    lines = [line for line in section.splitlines() if line]
    assert lines[1].startswith("Pick (at most 1 point of accuracy lost, fastest): #2 int8-dynamic "
                               "(backend=onnxruntime)")
    assert "speed-up 1.95x [1.90, 2.01] in the same process" in lines[1] and "3.95x smaller on disk" in lines[1]
    assert "accuracy -0.3 pt [-0.8, +0.2]" in lines[1]
    assert "Smallest within the same budget: #6 weight-only (bits=4)" in lines[1]
    assert lines[2].startswith("| # | variant | accuracy (%) ↑ | Δ accuracy, paired (pt) ↑ | x smaller on disk ↑ | "
                               "x faster, same process ↑ | flags |")
    answer = table_lines(section, "| # | variant")
    # the mask (beaten by int8 on quality, size and speed) and svd (beaten by int8) are not optimal
    assert set(answer) == {"identity (baseline)", "int8-dynamic (backend=onnxruntime)", "cast (dtype=bf16)",
                           "weight-only (bits=4)", "int8-static (method=entropy)"}
    assert list(answer)[0] == "identity (baseline)"  # best quality first
    int8 = answer["int8-dynamic (backend=onnxruntime)"]
    assert int8[3:6] == ["-0.3 [-0.8, +0.2]", "3.95x", "1.95x [1.90, 2.01]"]
    assert int8[6] == "quality change within noise"
    assert answer["int8-static (method=entropy)"][6] == "quality loss"
    assert answer["cast (dtype=bf16)"][6] == "slower than baseline, quality change within noise"
    assert md.index("## bbc-topic") < md.index("Pick (") < md.index("![accuracy against size on disk") \
        < md.index("![accuracy against speed-up") < md.index("#### All variants: quality") < md.index("## lm-bbc")


def test_pick_says_so_when_nothing_fits_and_lm_budget_is_perplexity(report):
    md, _ = report
    lm = md[md.index("### lm-bbc on cpu"):]
    assert "Pick (perplexity up at most 5%, fastest): #3 cast (dtype=fp16)" not in lm  # fp16 is no faster
    assert "Pick (perplexity up at most 5%, fastest): " in lm
    answer = table_lines(lm, "| # | variant")
    assert answer["int8-dynamic (backend=torch)"][3] == "+248.0 [+230.0, +260.0]"
    frame = pd.DataFrame([asdict(r) for r in classification_rows()])
    tight = frame[(frame.device == "cpu") & ~frame.cell_id.isin(["int8", "w4", "bf16", "mask"])]
    assert answer_for(tight).fastest[0].pick.is_baseline  # only entropy (over budget) and svd are left


def test_absent_device_is_one_line(report):
    md, _ = report
    assert "### bbc-topic on cuda" not in md and "skipped: no CUDA device" not in md.replace("cells skipped:", "")
    lines = [line for line in md.splitlines() if "cuda" in line and "bbc-topic" not in line.split(":")[0][:0]]
    cuda = [line for line in lines if "no CUDA device" in line]
    assert cuda == ["cuda: not measured: all 2 cells skipped: no CUDA device on this machine"]
    failures = md[md.index("### bbc-topic: skipped and failed cells"):md.index("## lm-bbc")]
    assert "on cuda" not in failures and "bnb-nf4 on cpu (minilm-l6): skipped" in failures


def test_full_tables_flags_and_deltas(report):
    md, paths = report
    assert "# compbench report: r1" in md and "abc1234" in md and "torch 2.13.0" in md and "numpy" not in md
    assert "interleaved in the same process" in md
    assert "accuracy (%) ↑" in md and "size on disk (MB) ↓" in md and "speed-up (x) ↑" in md
    assert "perplexity ↓" in md and "p50 latency (ms) ↓" in md

    rows = table_lines(md, "#### All variants: quality (bbc-topic on cpu)")
    base, int8 = rows["identity (baseline)"], rows["int8-dynamic (backend=onnxruntime)"]
    assert base[0] == "1" and "96.9 [95.4, 98.1]" in base and base[-1] == ""
    assert f"96.6 [95.0, 97.9] ({(0.966 - 0.969) * 100:+.1f} pt)" in int8 and "-0.3 [-0.8, +0.2]" in int8
    assert rows["prune-magnitude (ratio=0.5)"][-1] == "no real size gain, speed-up within noise"
    assert rows["cast (dtype=bf16)"][-1] == "slower than baseline, quality change within noise"
    assert "±0.0 pt" in " ".join(rows["cast (dtype=bf16)"])
    assert rows["lowrank-svd (rank=64)"][-1] == "speed-up within noise, quality loss, recall of tech -8.0 pt"
    assert rows["bnb-nf4"][-1].startswith("skipped: bitsandbytes 4-bit needs CUDA \\<script>")
    assert rows["bnb-nf4"][0] == "" and rows["int8-static"][-1] == "error: RuntimeError: calibration failed"
    assert list(rows)[-2:] == ["bnb-nf4", "int8-static"]  # failures last, not dropped

    cost = table_lines(md, "#### All variants: size and speed (bbc-topic on cpu)")
    assert "bnb-nf4" not in cost and f"22.9 ({90.4 / 22.9:.2f}x smaller)" in cost["int8-dynamic (backend=onnxruntime)"]
    assert "1.95x [1.90, 2.01]" in cost["int8-dynamic (backend=onnxruntime)"]
    header = md[md.index("#### All variants: size and speed (bbc-topic on cpu)"):].splitlines()[2]
    assert header.index("size on disk") < header.index("speed-up") < header.index("p50 latency")
    assert "accuracy: n = 639 examples" in md and "latency: n = 20–40 timed iterations" in md

    lm = table_lines(md, "#### All variants: quality (lm-bbc on cpu)")
    assert lm["int8-dynamic (backend=torch)"][-1] == "quality loss"
    assert f"89.0 [86.0, 92.0] ({(89.0 / 25.6 - 1) * 100:+.1f}%)" in lm["int8-dynamic (backend=torch)"]
    assert lm["cast (dtype=fp16)"][-1] == "speed-up within noise, quality change within noise"
    assert "perplexity: n = 80 windows" in md  # n counts the windows the interval resamples
    lm_section = md[md.index("## lm-bbc"):]
    assert SMOLLM_NOTE in lm_section and SMOLLM_NOTE not in md[:md.index("## lm-bbc")]

    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 4  # (accuracy, perplexity) x (size, speed-up) on cpu; cuda has no points
    names = {p.name for p in pngs}
    assert {"bbc-topic-cpu-accuracy-vs-size_bytes.png", "bbc-topic-cpu-accuracy-vs-speedup.png"} <= names
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png.name})" in md


def test_per_class_recall_table(report, tmp_path):
    md, _ = report
    recall = table_lines(md, "#### Per-class recall, % (bbc-topic on cpu)")
    assert recall["identity (baseline)"][2:] == ["95.0", "100.0", "96.0", "business (95.0)"]
    assert recall["lowrank-svd (rank=64)"][2:] == ["95.0 (±0.0)", "100.0 (±0.0)", "88.0 (-8.0) ▼", "tech (88.0)"]
    assert recall["int8-dynamic (backend=onnxruntime)"][2] == "94.0 (-1.0)"
    assert "| # | variant | business (n = 151) | sport (n = 152) | tech (n = 104) | weakest class |" in md

    # a run from before recall was recorded: computed from the per-example scores, by class id
    rows = [r for r in classification_rows() if r.device == "cpu" and r.cell_id in ("base", "svd")]
    for r in rows:
        r.details = None
    run_dir = make_run(tmp_path, "old", rows)
    (run_dir / "scores").mkdir()
    labels = [0] * 4 + [1] * 4
    for cell, predictions in (("base", [0, 0, 0, 0, 1, 1, 1, 1]), ("svd", [0, 0, 0, 0, 1, 0, 0, 1])):
        (run_dir / "scores" / f"{cell}.json").write_text(json.dumps({"accuracy": {"label": labels,
                                                                                  "prediction": predictions}}))
    old = table_lines(write_report(run_dir, tmp_path / "old-out", ("md",))[0].read_text(encoding="utf-8"),
                      "#### Per-class recall")
    assert old["lowrank-svd (rank=64)"][2:] == ["100.0 (±0.0)", "50.0 (-50.0) ▼", "class 1 (50.0)"]


def kd_rows():
    """A no-teacher student and KD over temperature x alpha (one combination not run), each with its gain."""
    student = '{"alpha":0.0,"student":"minilm-l3","use_teacher":false}'
    rows = (rows_of("base", "identity", accuracy=(0.96, 0.945, 0.975, 639), size_bytes=90e6, speedup=(1.0, 0.97, 1.03))
            + rows_of("stud", "kd", student, accuracy=(0.95, 0.93, 0.965, 639), size_bytes=60e6,
                      speedup=(1.9, 1.8, 2.0)))
    gains_by_t_alpha = {(1, 0.5): (0.004, -0.003, 0.011), (2, 0.5): (0.012, 0.005, 0.019),
                        (2, 0.9): (-0.02, -0.03, -0.01)}
    for (t, alpha), (gain, low, high) in gains_by_t_alpha.items():
        params = json.dumps({"alpha": alpha, "student": "minilm-l3", "temperature": t, "use_teacher": True},
                            sort_keys=True, separators=(",", ":"))
        rows += rows_of(f"kd-{t}-{alpha}", "kd", params, accuracy=(0.95 + gain, 0.93, 0.97, 639), size_bytes=60e6,
                        speedup=(1.9, 1.8, 2.0), gain_vs_companion=(gain, low, high, 639),
                        details={"gain_vs_companion": {"companion_cell": "stud", "paired": "bootstrap"}})
    return rows


def test_kd_gain_table_and_heat_map(tmp_path):
    run_dir = make_run(tmp_path, "kd", kd_rows())
    paths = write_report(run_dir, tmp_path / "out", ("md",))
    md = paths[0].read_text(encoding="utf-8")
    table = table_lines(md, "#### Distillation: gain from the teacher", key="KD variant")
    best = table["kd (alpha=0.5, student=minilm-l3, temperature=2)"]
    assert best[2:] == ["96.2 [93.0, 97.0]", "#2", "95.0 [93.0, 96.5]", "–", "–", "+1.2 pt [+0.5, +1.9]",
                        "teacher helps"]  # these rows record no training steps (–)
    assert "No-teacher students: #2 kd (alpha=0.0, student=minilm-l3, use_teacher=false)." in md
    assert table["kd (alpha=0.9, student=minilm-l3, temperature=2)"][-1] == "teacher hurts"
    assert table["kd (alpha=0.5, student=minilm-l3, temperature=1)"][-1] == "within noise"
    assert "no-teacher" not in " ".join(table)  # the companion itself has no gain row
    answer = table_lines(md, "| # | variant")  # the best KD student dominates the baseline, still shown first
    assert list(answer)[0] == "identity (baseline)"
    assert answer["identity (baseline)"][-1] == "not Pareto-optimal: shown as the reference"

    frame = load(run_dir)
    view = variant_table(frame)
    (sweep,) = sweeps(view, gains(view))
    assert (sweep.x_name, sweep.x_values, sweep.y_name, sweep.y_values) == ("alpha", [0.5, 0.9], "temperature", [1, 2])
    assert sweep.grid[1][0][0] == pytest.approx(1.2) and sweep.grid[0][1] is None  # T=1, alpha=0.9 not run
    assert sweep.grid[1][1] == pytest.approx((-2.0, -3.0, -1.0))
    heat = [p for p in paths if "kd-gain" in p.name]
    assert len(heat) == 1 and heat[0].read_bytes()[:4] == b"\x89PNG" and f"]({heat[0].name})" in md


def test_kd_gain_of_a_language_model_is_perplexity_removed(tmp_path):
    lm = {"task": "lm-bbc", "model": "smollm2-135m"}
    rows = (rows_of("base", "identity", **lm, perplexity=25.0, size_bytes=500e6)
            + rows_of("stud", "kd", '{"use_teacher":false}', **lm, perplexity=40.0, size_bytes=250e6)
            + rows_of("kd", "kd", '{"use_teacher":true}', **lm, perplexity=36.0, size_bytes=250e6,
                      gain_vs_companion=(0.1, 0.08, 0.12, 60),
                      details={"gain_vs_companion": {"companion_cell": "stud"}}))
    md = write_report(make_run(tmp_path, "kd-lm", rows), tmp_path / "out", ("md",))[0].read_text(encoding="utf-8")
    row = table_lines(md, "#### Distillation", key="KD variant")["kd"]  # use_teacher=true is the default
    assert row[2:] == ["36.0", "#2", "40.0", "–", "–", "+10.0% [+8.0, +12.0]", "teacher helps"]


def chain_rows():
    params = json.dumps({"stages": [{"name": "prune-structured", "ratio": 0.5}, {"name": "kd", "temperature": 2},
                                    {"backend": "onnxruntime", "name": "int8-dynamic"}]}, sort_keys=True)
    chain = [(1, 0.950, -0.019, 70e6, 1.6, 30.0), (2, 0.962, -0.007, 70e6, 1.6, 300.0),
             (3, 0.958, -0.011, 18e6, 4.0, 8.0)]
    rows = rows_of("base", "identity", accuracy=(0.969, 0.954, 0.981, 639), size_bytes=90e6,
                   speedup=(1.0, 0.97, 1.03))
    rows += rows_of("ch", "chain", params, stage=0, accuracy=0.969, size_bytes=90e6)  # the chain's own baseline
    for stage, acc, delta, size, speed, seconds in chain:
        rows += rows_of("ch", "chain", params, stage=stage, accuracy=(acc, acc - 0.015, acc + 0.013, 639),
                        accuracy_delta=(delta, delta - 0.006, delta + 0.005, 639), size_bytes=size,
                        speedup=(speed, speed - 0.1, speed + 0.1), compress_seconds=seconds)
    return rows


def test_chain_table_stage_by_stage(tmp_path):
    md = write_report(make_run(tmp_path, "chain", chain_rows()), tmp_path / "out", ("md",))[0].read_text(
        encoding="utf-8")
    title = "#### Chain prune-structured → kd → int8-dynamic (bbc-topic on cpu)"
    assert title in md
    rows = table_lines(md, title, key="stage")
    assert list(rows) == ["0", "1", "2", "3"]
    assert rows["0"][1] == "baseline (identity)" and rows["0"][4:7] == ["90.0", "1x", "1x"]
    assert rows["1"][1] == "prune-structured (ratio=0.5)" and rows["2"][1] == "kd (temperature=2)"
    assert rows["3"][1] == "int8-dynamic (backend=onnxruntime)"
    stage3 = rows["3"]
    assert stage3[2:8] == ["95.8 [94.3, 97.1]", "-1.1 [-1.7, -0.6]", "18.0", "5.00x", "4.00x [3.90, 4.10]", "8.00"]
    assert stage3[8:11] == ["-0.4 pt", "3.89x", "2.50x"]  # what int8 added after distillation
    assert rows["2"][8:11] == ["+1.2 pt", "1.00x", "1.00x"] and rows["1"][8:11] == ["-1.9 pt", "1.29x", "1.60x"]
    run_dir = tmp_path / "results" / "chain"
    compared = compare_runs(run_dir, run_dir)
    assert "| chain (stages=[prune-structured → kd → int8-dynamic]) · stage 3 | accuracy (%) | 95.8" in compared
    answer = table_lines(md, "| # | variant")  # every stage is a variant of its own; the chain's stage 0 is not
    assert "chain (stages=[prune-structured → kd → int8-dynamic]) · stage 3" in answer
    assert not any("stage 0" in label for label in answer)


def test_plot_numbers_never_overlap():
    # 24 variants in three tight clusters, one of them a pile of near-identical points
    rows = rows_of("base", "identity", accuracy=0.96, size_bytes=90e6, speedup=(1.0, 0.97, 1.03))
    rng = random.Random(0)
    for k in range(23):
        centre = (20e6, 0.955) if k < 10 else (60e6, 0.94) if k < 18 else (85e6, 0.962)
        rows += rows_of(f"v{k}", "weight-only", json.dumps({"bits": k}), accuracy=centre[1] + rng.uniform(-1e-3, 1e-3),
                        size_bytes=centre[0] * (1 + rng.uniform(-0.01, 0.01)), speedup=1 + k / 10)
    table = variant_table(pd.DataFrame([asdict(r) for r in rows]))
    for axis in (column_for("size_bytes", "bytes", False), column_for("speedup", "x", True)):
        fig = pareto_figure(table, column_for("accuracy", "fraction", True), axis, "crowded")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t for t in ax.texts if t.get_gid() == LABEL_GID]
        assert len(labels) == 24 and sorted(int(t.get_text()) for t in labels) == list(range(1, 25))
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the number, without its leader line
        frame = ax.get_window_extent(renderer)
        for i, box in enumerate(boxes):
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            assert not any(box.overlaps(other) for other in boxes[i + 1:])
        keys = [t.get_text() for t in fig.texts]
        assert keys[0].startswith("1  identity (baseline)") and len(keys) == 24  # the key names every number
    long = rows_of("base", "identity", accuracy=0.96, size_bytes=90e6) + rows_of(
        "drop", "layer-drop", json.dumps({"ratio": 0.25, "recovery_lr": 5e-5, "recovery_steps": 0, "count": 0,
                                          "calibration_batches": 8, "strategy": "every-other"}), accuracy=0.12,
        size_bytes=70e6)
    fig = pareto_figure(variant_table(pd.DataFrame([asdict(r) for r in long])),
                        column_for("accuracy", "fraction", True), column_for("size_bytes", "bytes", False), "long")
    assert "strategy=every-other" in " ".join(t.get_text() for t in fig.texts)  # wrapped, never cut


def test_long_labels_keep_what_differs_from_defaults():
    from compressors.distill.kd import KDConfig

    defaults = json.loads(json.dumps(asdict(KDConfig())))
    rows = rows_of("base", "identity", accuracy=0.9)
    for cell, temperature in (("a", 1.0), ("b", 4.0)):
        params = json.dumps({**defaults, "temperature": temperature, "max_steps": 4}, sort_keys=True)
        rows += rows_of(cell, "kd", params, accuracy=0.8)
    labels = variant_table(pd.DataFrame([asdict(r) for r in rows])).label.tolist()
    assert labels == ["identity", "kd (max_steps=4, temperature=1.0)", "kd (max_steps=4, temperature=4.0)"]
    assert variant_table(pd.DataFrame([asdict(r) for r in rows_of("c", "cast", '{"dtype":"fp16"}', accuracy=0.9)])
                         ).label.tolist() == ["cast (dtype=fp16)"]  # short labels keep their defaults


def test_render_table_scales_units(run):
    frame = load(run)
    group = frame[(frame.task == "lm-bbc") & (frame.device == "cpu")]
    header, body = render_table(variant_table(group), columns_for(group))
    assert header[0] == "variant" and "size on disk (MB) ↓" in header and header[-1] == "flags"
    assert body[0][header.index("size on disk (MB) ↓")] == "538"
    assert [sig3(x) for x in (4.512e-6, 0.012345, 1.2345, 25.64, 151.2, 12345.6)] == [
        "4.51e-06", "0.0123", "1.23", "25.6", "151", "12,346"]


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


def test_a_metric_skipped_alone_leaves_the_cell_measured(tmp_path):
    rows = (rows_of("base", "identity", task="lm-bbc", perplexity=25.0, size_bytes=500e6, speedup=1.0)
            + rows_of("onnx", "onnx", task="lm-bbc", perplexity=25.0, size_bytes=480e6, speedup=1.3))
    rows.append(Row(run_id="r1", cell_id="onnx", task="lm-bbc", model="minilm-l6", compressor="onnx", params="{}",
                    stage=1, device="cpu", runtime="onnxruntime", threads=2, metric="decode_tokens_per_s", value=None,
                    unit=None, higher_is_better=None, status="skipped", reason="no cached generation"))
    md = write_report(make_run(tmp_path, "partial", rows), tmp_path / "out", ("md",))[0].read_text(encoding="utf-8")
    assert table_lines(md, "#### All variants: quality")["onnx"][0] == "2"
    assert "onnx: decode not measured (skipped): no cached generation" in md and "skipped and failed" not in md


def test_html_is_self_contained_and_escaped(run, tmp_path):
    paths = write_report(run, tmp_path / "html-only", ("html",))
    assert [p.name for p in paths] == ["index.html"]  # the plots are inside the page
    html = paths[0].read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 4
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered and "<link" not in lowered
    assert "<script" not in lowered and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert SMOLLM_NOTE in html and "slower than baseline" in html and '<table class="answer">' in html
    assert html.index('class="pick"') < html.index('<table class="answer">') < html.index("All variants: quality")


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
    rows = table_lines(md, "#### All variants: quality (bbc-topic on cpu)")
    assert rows["int8-dynamic"][-1] == ""  # no baseline: no flags, no deltas
    assert rows["int8-dynamic"][2] == "50.0" and "No measured identity baseline for minilm-l6 on cpu" in md
    in_table = rows["identity"][-1]
    assert in_table.startswith("error: MemoryError: xxx") and in_table.endswith("…") and len(in_table) < 140
    assert reason in md  # the list below the table keeps the whole reason


def test_the_variants_a_matrix_left_out_are_listed_with_why_and_where(tmp_path, report):
    md, _ = report
    assert "Left out of this run" not in md  # a matrix without [[left_out]] tables says nothing
    left = [{"variant": "fp16 and bf16 casts", "reason": "emulated on this CPU", "matrix": "quant"}]
    manifest = {**MANIFEST, "matrix": {**MANIFEST["matrix"], "left_out": left}}
    run_dir = make_run(tmp_path, "r2", classification_rows(), manifest)
    page = write_report(run_dir, tmp_path / "out", ("md",))[0]
    rows = table_lines(page.read_text(encoding="utf-8"), "## Left out of this run")
    assert rows["fp16 and bf16 casts"][1:] == ["emulated on this CPU", "`quant`"]
