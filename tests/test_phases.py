"""The phase clock and the report's time table, without running a model."""

import json
import time

import pandas as pd
import pytest

from bench.measure.phases import PHASES, PhaseClock
from bench.report.timing import phase_frame, time_rows, time_summary


def test_the_clock_adds_up_per_phase_and_starts_afresh_when_taken():
    clock = PhaseClock()
    with clock.phase("timing"):
        time.sleep(0.02)
    with clock.phase("timing"):
        time.sleep(0.02)
    clock.add("load", 1.5)
    taken = clock.take()
    assert list(taken) == ["load", "timing"]  # phase order, not the order they ran in
    assert taken["load"] == 1.5 and 0.04 <= taken["timing"] < 1.0
    assert clock.take() == {}


def test_a_phase_that_raises_is_still_timed():
    clock = PhaseClock()
    with pytest.raises(RuntimeError), clock.phase("compress"):
        raise RuntimeError("boom")
    assert "compress" in clock.take()


def test_an_unknown_phase_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="quality"), PhaseClock().phase("evaluate"):
        pass


def _row(cell: str, compressor: str, stage: int, **phases: float) -> dict:
    return {"cell_id": cell, "task": "t", "model": "m", "device": "cpu", "compressor": compressor, "params": "{}",
            "stage": stage, "metric": "compress_seconds", "details": json.dumps({"phases": phases})}


def test_cells_sum_their_stages_and_the_slowest_comes_first():
    frame = pd.DataFrame([
        _row("a", "identity", 0, load=2.0, timing=1.0, quality=1.0),
        _row("b", "chain", 1, load=2.0, compress=30.0, quality=1.0),
        _row("b", "chain", 2, compress=10.0, timing=2.0, quality=1.0),
        {**_row("c", "old", 1), "details": "{}"},  # a row from before phases: left out, no error
    ])
    table = phase_frame(frame)
    assert list(table.variant) == ["chain", "identity"]
    assert table.loc[0, "compress"] == 40.0 and table.loc[0, "total"] == 46.0
    header, rows = time_rows(table)
    assert header[-1] == "total (s)" and rows[0][-1] == "46.0" and len(header) == len(PHASES) + 5
    summary = time_summary(table)
    assert summary.startswith("2 cells spent 0.8 min") and "compress 0.7 min (80%)" in summary
