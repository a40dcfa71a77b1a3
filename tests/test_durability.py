"""A run folder survives a kill at any moment: manifest.json is replaced whole, rows.jsonl keeps its whole
rows, and a damaged or older run gives one line and exit 2 where a command reads it."""

import io
import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import store
from bench.results.store import (
    MANIFEST_FILE,
    ROWS_FILE,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    RunFolderError,
    drop_error_cells,
    read_manifest,
    read_rows,
    repair_torn_tail,
    write_manifest,
)
from tests.gate_rows import realistic_rows, write_run

REPO = Path(__file__).parents[1]

class _HalfWrite:
    """A file whose write stores half of the text, then fails as a full disk (or a kill) would."""

    def __init__(self, file):
        self.file = file

    def write(self, text):
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_write_that_dies_half_way_leaves_the_old_manifest_whole(tmp_path, monkeypatch):
    # before the fix the manifest was truncated and rewritten in place: a write cut short (full disk,
    # kill) left half a JSON file, and --resume, report, check and recommend raised a JSONDecodeError
    write_manifest(tmp_path, {"run_id": "r", "generation": 1, "cells": {"c1": "label"}})
    real_open = io.open

    def failing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return _HalfWrite(handle) if "w" in mode else handle

    monkeypatch.setattr(io, "open", failing_open)
    with pytest.raises(OSError, match="No space left"):
        write_manifest(tmp_path, {"run_id": "r", "generation": 2, "cells": {"c1": "label", "c2": "x" * 10000}})
    monkeypatch.undo()
    assert read_manifest(tmp_path) == {SCHEMA_KEY: SCHEMA_VERSION, "run_id": "r", "generation": 1,
                                       "cells": {"c1": "label"}}
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_FILE]  # no temporary file left behind


def test_a_failed_manifest_write_keeps_the_old_one_and_no_temporary_file(tmp_path, monkeypatch):
    write_manifest(tmp_path, {"run_id": "r", "generation": 1})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_manifest(tmp_path, {"run_id": "r", "generation": 2})
    assert read_manifest(tmp_path)["generation"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_FILE]


def test_cutting_a_torn_tail_truncates_in_place(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", realistic_rows())
    whole = read_rows(run)
    with open(run / ROWS_FILE, "a", encoding="utf-8") as f:
        f.write('{"cell_id": "torn", "met')  # a kill inside the last append

    def rewrite_then_fail(path, data):  # a rewrite that dies once the file is truncated (disk full, kill)
        open(path, "wb").close()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", rewrite_then_fail)
    repair_torn_tail(run)  # before the fix it rewrote the file: the failure above left it empty
    assert read_rows(run) == whole and (run / ROWS_FILE).read_bytes().endswith(b"\n")


def test_dropping_error_cells_replaces_rows_whole(tmp_path):
    run = write_run(tmp_path / "run", realistic_rows())
    rows = read_rows(run)
    failed = next(r for r in rows if r["metric"] == "cell" and r["status"] == "error")["cell_id"]
    assert drop_error_cells(run) == 1
    assert read_rows(run) == [r for r in rows if r["cell_id"] != failed]
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == [MANIFEST_FILE, ROWS_FILE]


@pytest.mark.parametrize("command", [
    ["report", "{run}", "--out", "{tmp}/reports"],
    ["check", "{run}", "--budget", str(REPO / "bench" / "config" / "budgets" / "example.toml")],
    ["recommend", "{run}"],
])
def test_a_damaged_manifest_is_one_line_and_exit_2(tmp_path, capsys, command):
    run = write_run(tmp_path / "run", realistic_rows())
    text = (run / MANIFEST_FILE).read_text()
    (run / MANIFEST_FILE).write_text(text[: len(text) // 2])  # what an older compbench left after a kill
    code = main([part.format(run=run, tmp=tmp_path) for part in command])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "manifest.json is damaged" in err[0], err


def test_read_manifest_names_a_damaged_file(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text('{"run_id": "r", "cells": {"a": ')
    with pytest.raises(RunFolderError, match="manifest.json is damaged"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="not a JSON object"):
        read_manifest(tmp_path)


def test_write_manifest_keeps_a_given_schema_version(tmp_path):
    write_manifest(tmp_path, {"run_id": "r"})
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())[SCHEMA_KEY] == SCHEMA_VERSION
    write_manifest(tmp_path, {SCHEMA_KEY: 0, "run_id": "r"})
    assert read_manifest(tmp_path)[SCHEMA_KEY] == 0
