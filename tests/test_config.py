"""Matrix validation: every mistake names the file, the key and what would be right."""

import re

import pytest

from bench.config.matrix import ConfigError, load_matrix, parse_matrix

BASE = {"task": [{"name": "bbc-topic", "model": "tiny-bert"}], "compressor": [{"name": "identity"}]}


def parse(**changes):
    raw = {**BASE, **changes}
    return parse_matrix(raw, source="m.toml")


def test_shipped_matrices_load():
    for name in ("default", "quick"):
        matrix = load_matrix(name)
        assert matrix.tasks and matrix.compressors


def test_known_task_fills_type_and_dataset_and_latency_batch():
    matrix = parse(task=[{"name": "lm-bbc", "model": "tiny-gpt2"}])
    assert matrix.tasks[0].type == "causal-lm"
    assert matrix.tasks[0].dataset == "bbc-news"
    assert matrix.tasks[0].latency_batch == 1


def test_quick_shrinks_slices_and_timer():
    matrix = parse_matrix(BASE, source="m.toml", quick=True)
    assert matrix.tasks[0].eval_limit == 64 and matrix.latency_min_seconds < 1


@pytest.mark.parametrize("changes, message", [
    ({"seeed": 1}, "unknown key 'seeed': did you mean 'seed'"),
    ({"task": [{"name": "bbc-topik", "model": "x"}]}, "unknown task 'bbc-topik': did you mean 'bbc-topic'"),
    ({"task": [{"name": "bbc-topic"}]}, "key 'model' is required"),
    ({"task": [{"name": "bbc-topic", "model": "m", "max_length": "long"}]}, "key 'max_length': expected an integer"),
    ({"task": [{"name": "lm-bbc", "model": "m", "seq_len": 0}]}, "key 'seq_len': expected an integer >= 2"),
    ({"task": [{"name": "lm-bbc", "model": "m", "stride": 600}]}, "'stride' must be at most seq_len"),
    ({"task": [{"name": "x", "model": "m", "type": "regression", "dataset": "d"}]}, "key 'type' must be"),
    ({"compressor": [{"name": "int4-magic"}]}, "unknown compressor 'int4-magic'"),
    ({"compressor": [{"name": "cast", "dtype": "fp8"}]}, r"\[\[compressor\]\] #1: dtype must be one of"),
    ({"devices": ["tpu"]}, "key 'devices' must be a list drawn from"),
    ({"compressor": []}, "needs at least one"),
])
def test_bad_matrix_messages(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse(**changes)
    assert str(info.value).startswith("m.toml")
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such matrix file"):
        load_matrix(str(tmp_path / "absent.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_matrix(str(bad))
    with pytest.raises(ConfigError, match="unknown matrix 'defualt': did you mean 'default'"):
        load_matrix("defualt")


# ---- fuzzing: whatever the structure, the loader answers with a ConfigError or a Matrix -------------
def _fuzz_strategies():
    from hypothesis import strategies as st

    from bench.config.matrix import _MATRIX_KEYS, _TASK_FIELDS
    from compressors import available

    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                        st.sampled_from(["cpu", "cuda", "bbc-topic", "lm-bbc", "tiny-bert", "causal-lm",
                                         "classification", "bbc-news", "", "..", "/etc/passwd", "fp16", "torch"]))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                          max_leaves=8)
    task_keys = st.sampled_from(sorted(_TASK_FIELDS)) | st.text(max_size=8)
    task = st.dictionaries(task_keys, values, max_size=6) | values
    comp_names = st.sampled_from(sorted(available())) | st.text(max_size=10)
    param_keys = st.sampled_from(["dtype", "backend", "bits", "group_size", "ratio", "rank", "stages", "scheme",
                                  "per_channel", "calibration_batches", "epochs"]) | st.text(max_size=8)
    compressor = st.builds(lambda name, params: {"name": name, **params}, comp_names,
                           st.dictionaries(param_keys, values, max_size=3)) | values
    matrix = st.fixed_dictionaries({}, optional={
        "task": st.lists(task, max_size=3) | values, "compressor": st.lists(compressor, max_size=3) | values,
        **{key: values for key in sorted(_MATRIX_KEYS - {"task", "compressor"})},
    })
    junk = st.dictionaries(st.text(max_size=8) | st.integers() | st.none(), values, max_size=4)
    return matrix | junk | values


@pytest.mark.timeout(120)
def test_fuzzed_matrices_give_config_errors_only():
    from hypothesis import HealthCheck, given, settings

    from bench.config.matrix import Matrix

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_fuzz_strategies())
    def check(raw):
        try:
            matrix = parse_matrix(raw, source="fuzz.toml")
        except ConfigError as exc:
            assert str(exc).startswith("fuzz.toml") and "\n" not in str(exc)
        else:
            assert isinstance(matrix, Matrix) and matrix.tasks and matrix.compressors

    check()


@pytest.mark.timeout(120)
def test_fuzzed_toml_text_gives_config_errors_only(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    lines = st.sampled_from(['[[task]]', '[[compressor]]', 'name = "bbc-topic"', 'name = "identity"',
                             'model = "tiny-bert"', 'name = "cast"', 'dtype = "fp16"', 'seq_len = -1',
                             'devices = ["cpu"]', 'seed = 1e400', 'stages = [{ name = "identity" }]', '[task]',
                             'name = [', 'x = { a = 1 }', 'bits = "four"', 'name = "../../x"', '[[task.x]]',
                             'threads = 99999999999999999999', 'test_dataset = 3', "\x00"]) | st.text(max_size=20)
    path = tmp_path / "fuzz.toml"

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(lines.map(str.encode) | st.binary(max_size=8), max_size=12))
    def check(chunks):
        path.write_bytes(b"\n".join(chunks))  # bytes: a file that is not UTF-8 is bad input too
        try:
            load_matrix(str(path))
        except ConfigError as exc:
            assert "\n" not in str(exc)

    check()


def test_left_out_variants_are_kept_with_their_reason_and_matrix():
    matrix = parse(left_out=[{"variant": "fp16 cast", "reason": "emulated on this CPU", "matrix": "quant"}])
    (left,) = matrix.left_out
    assert (left.variant, left.reason, left.matrix) == ("fp16 cast", "emulated on this CPU", "quant")
    assert list(matrix.to_dict()["left_out"]) == [{"variant": "fp16 cast", "reason": "emulated on this CPU",
                                             "matrix": "quant"}]
    shipped = {"quant", "lm", "prune", "lowrank", "distill", "gpu", "heal"}
    assert {item.matrix for item in load_matrix("default").left_out} <= shipped


@pytest.mark.parametrize("left_out, message", [
    ([{"variant": "x", "reason": "y", "matrix": "quant2"}], "matrix 'quant2' is not a shipped matrix"),
    ([{"variant": "x", "reason": "y"}], "needs exactly the keys variant, reason, matrix"),
    ([{"variant": "", "reason": "y", "matrix": "quant"}], "must be non-empty strings"),
    ({"variant": "x"}, "'left_out' must be [[left_out]] tables"),
])
def test_a_bad_left_out_table_names_what_is_wrong(left_out, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(left_out=left_out)


def test_a_variant_can_ask_for_a_cpu_that_runs_it_natively(monkeypatch):
    from bench.run import provenance, runner
    from compressors.runtimes import cpu_features

    matrix = parse(compressor=[{"name": "identity"},
                               {"name": "cast", "dtype": "bf16", "needs_cpu_flags": ["avx512_bf16", "amx_bf16"]}],
                   devices=["cpu", "cuda"])
    assert matrix.compressors[1].params == {"dtype": "bf16"}  # where it runs is not how it compresses
    cells = {(c["compressor"]["name"], c["device"]): c for c in runner.plan_cells(matrix, ("cpu", "cuda"))}
    assert cells["cast", "cpu"]["needs_cpu_flags"] == ("avx512_bf16", "amx_bf16")
    assert cells["cast", "cuda"]["needs_cpu_flags"] is None and cells["identity", "cpu"]["needs_cpu_flags"] is None
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    reason = provenance.cpu_lacks(("avx512_bf16", "amx_bf16"))
    assert reason.startswith("left out on this CPU") and "avx512_bf16 or amx_bf16" in reason
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert provenance.cpu_lacks(("avx512_bf16", "amx_bf16")) is None
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: None)  # unreadable flags: run it rather than guess
    assert provenance.cpu_lacks(("avx512_bf16",)) is None


@pytest.mark.parametrize("flags", ["avx512_bf16", [], ["AVX512_BF16"], [1]])
def test_bad_needs_cpu_flags_names_what_is_wrong(flags):
    with pytest.raises(ConfigError, match="key 'needs_cpu_flags' must be a non-empty list of CPU flags"):
        parse(compressor=[{"name": "cast", "needs_cpu_flags": flags}])
