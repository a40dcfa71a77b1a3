"""Warm cell processes (bench/run/warm.py): forked from a server that imported torch once, yet each
one a process of its own with the caller's environment, directory, exit code and timeout.

The whole runs that use them (every end-to-end test) are in tests/test_runner.py and tests/test_faults.py.
"""

import json
import os
import sys
import time

from bench.run import warm
from bench.run.executors import run_python


def probe_main(argv: list[str]) -> int:
    """A cell stand-in: says what it started with, exits with the code it is given."""
    with open(argv[0], "w", encoding="utf-8") as f:
        json.dump({"cwd": os.getcwd(), "probe": os.environ.get("COMPBENCH_PROBE"), "torch": "torch" in sys.modules,
                   "session_leader": os.getsid(0) == os.getpid()}, f)
    print("said hello")
    return int(argv[1])


def sleep_main(argv: list[str]) -> int:
    time.sleep(float(argv[0]))
    return 0


def test_a_warm_process_has_torch_loaded_and_the_callers_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPBENCH_PROBE", "set after the server started, if it had")
    out, log = tmp_path / "out.json", tmp_path / "log.txt"
    code = run_python("tests.test_warm:probe_main", [str(out), "3"], dict(os.environ), log, limit_mb=0, timeout_s=300)
    assert code == 3
    seen = json.loads(out.read_text())
    assert seen == {"cwd": str(tmp_path), "probe": "set after the server started, if it had", "torch": True,
                    "session_leader": True}
    assert "said hello" in log.read_text()


def test_a_process_past_its_timeout_is_killed(tmp_path):
    started = time.perf_counter()
    code = run_python("tests.test_warm:sleep_main", ["120"], dict(os.environ), tmp_path / "log.txt", limit_mb=0,
                      timeout_s=2)
    assert code is None and time.perf_counter() - started < 60


def test_other_import_time_variables_start_cold(tmp_path, monkeypatch):
    run_python("tests.test_warm:probe_main", [str(tmp_path / "a.json"), "0"], dict(os.environ), tmp_path / "a.log",
               limit_mb=0, timeout_s=300)  # the server exists now, with this environment
    assert warm.usable(dict(os.environ))
    assert not warm.usable({**os.environ, "OMP_NUM_THREADS": "7"})  # read by torch when it was imported
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    out = tmp_path / "cold.json"
    assert run_python("tests.test_warm:probe_main", [str(out), "0"], dict(os.environ), tmp_path / "b.log",
                      limit_mb=0, timeout_s=300) == 0
    assert json.loads(out.read_text())["torch"] is False  # a fresh interpreter, which imported nothing yet
