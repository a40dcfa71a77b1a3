"""The run table decides each variant's baseline by the task's settings, not by its name (defect 5)."""

from __future__ import annotations

import json

from bench.analysis.runtable import RunTable
from bench.run.runner import task_key
from tests.gate_rows import cell_rows


def keyed(rows, key):
    for row in rows:
        row.details = json.dumps({"task_key": key, **(json.loads(row.details) if row.details else {})})
    return rows


def test_a_variant_takes_the_identity_cell_of_its_own_task_settings():
    short, long = task_key({"name": "bbc-topic", "max_length": 64}), task_key({"name": "bbc-topic", "max_length": 128})
    assert short != long
    # a resumed run whose task was edited: two identity cells under one task name, first the old settings
    rows = (keyed(cell_rows("base-64", "identity", accuracy=0.90, size_bytes=90e6), short)
            + keyed(cell_rows("base-128", "identity", accuracy=0.96, size_bytes=90e6), long)
            + keyed(cell_rows("int8-128", "int8-dynamic", accuracy=0.95, size_bytes=30e6), long))
    table = RunTable(rows)
    variant = table.variant("int8-128", 1)
    assert table.baseline_of(variant).cell_id == "base-128"  # not the first identity of the task's name
    assert abs(variant.quality_change - (95 - 96)) < 1e-9  # points against its own baseline, not +5 against the old one
    assert {v.cell_id for v in table.variants if v.is_baseline} == {"base-64", "base-128"}


def test_rows_without_a_task_key_still_find_their_baseline():
    rows = (cell_rows("base", "identity", accuracy=0.96, size_bytes=90e6)
            + cell_rows("int8", "int8-dynamic", accuracy=0.95, size_bytes=30e6))
    table = RunTable(rows)
    assert table.baseline_of(table.variant("int8", 1)).cell_id == "base"
    assert table.variant("int8", 1).size_ratio == 3.0
