"""Warm cell processes (bench/run/warm.py): forked from a server that imported torch once, yet each
one a process of its own with the caller's environment, directory, exit code and timeout.

Each scenario runs in a fresh interpreter (`in_fresh_python`): a pytest worker may already hold a fork
server started by an earlier test under another environment, which is what makes cells start cold.
The whole runs that use warm processes (every end-to-end test) are in tests/test_runner.py and others.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # not from tests.conftest: importing it imports torch


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


def in_fresh_python(scenario: str, tmp_path) -> None:
    """Run `scenario(tmp_path)` of this module in a new interpreter; its assertions decide."""
    code = f"from tests.test_warm import {scenario}; {scenario}({str(tmp_path)!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]


def warm_process_has_torch_and_the_callers_environment(tmp: str) -> None:
    from bench.run.executors import run_python

    os.chdir(tmp)
    os.environ["COMPBENCH_PROBE"] = "set now"
    run_python("tests.test_warm:probe_main", [f"{tmp}/first.json", "0"], dict(os.environ), None, 0, 300)
    os.environ["COMPBENCH_PROBE"] = "set after the server started"
    code = run_python("tests.test_warm:probe_main", [f"{tmp}/out.json", "3"], dict(os.environ), f"{tmp}/log.txt",
                      limit_mb=0, timeout_s=300)
    assert code == 3
    seen = json.loads(open(f"{tmp}/out.json").read())
    assert seen == {"cwd": tmp, "probe": "set after the server started", "torch": True, "session_leader": True}
    assert "said hello" in open(f"{tmp}/log.txt").read()


def process_past_its_timeout_is_killed(tmp: str) -> None:
    from bench.run.executors import run_python

    started = time.perf_counter()
    code = run_python("tests.test_warm:sleep_main", ["120"], dict(os.environ), f"{tmp}/log.txt", limit_mb=0,
                      timeout_s=2)
    assert code is None and time.perf_counter() - started < 60


def other_import_time_variables_start_cold(tmp: str) -> None:
    from bench.run import warm
    from bench.run.executors import run_python

    run_python("tests.test_warm:probe_main", [f"{tmp}/a.json", "0"], dict(os.environ), f"{tmp}/a.log", 0, 300)
    assert json.loads(open(f"{tmp}/a.json").read())["torch"] is True  # the server exists now, with this environment
    assert warm.usable(dict(os.environ))
    assert not warm.usable({**os.environ, "OMP_NUM_THREADS": "7"})  # read by torch when it was imported
    os.environ["OMP_NUM_THREADS"] = "7"
    assert run_python("tests.test_warm:probe_main", [f"{tmp}/cold.json", "0"], dict(os.environ), f"{tmp}/b.log",
                      0, 300) == 0
    assert json.loads(open(f"{tmp}/cold.json").read())["torch"] is False  # a fresh interpreter: nothing imported


def test_a_warm_process_has_torch_loaded_and_the_callers_environment(tmp_path):
    in_fresh_python("warm_process_has_torch_and_the_callers_environment", tmp_path)


def test_a_process_past_its_timeout_is_killed(tmp_path):
    in_fresh_python("process_past_its_timeout_is_killed", tmp_path)


def test_other_import_time_variables_start_cold(tmp_path):
    in_fresh_python("other_import_time_variables_start_cold", tmp_path)
