"""Forward latency of every variant of a matrix, timed by pytest-benchmark on the kept artifacts.

The matrix runs once per session through the compbench pytest plugin (`compbench_run`), keeping
each variant's artifact; every test reloads one artifact (compressors.shared.artifacts.load_artifact)
and times one forward on the input shape the run timed, with the run's thread count. Test ids
are the cell labels, so pytest-benchmark's storage compares the same variants across commits:

    pytest benchmarks/ --compbench-matrix quick --compbench-keep-artifacts --benchmark-autosave
    # on a later commit: fail when a variant's mean time grew by more than 10%
    pytest benchmarks/ --compbench-matrix quick --compbench-keep-artifacts \\
        --benchmark-compare --benchmark-compare-fail=mean:10%

pytest-benchmark's numbers are absolute times on this machine: compare runs made on the same
machine (the run's own `speedup` rows are the noise-robust ratio). Variants whose artifact format
does not reload are skipped with the reason.
"""

from __future__ import annotations

DEFAULT_MATRIX = "quick"


def pytest_generate_tests(metafunc):
    """One test per cell of the matrix (ids: its cell labels, stable across commits)."""
    if "cell_label" not in metafunc.fixturenames:
        return
    from bench.config.matrix import load_matrix
    from bench.run.runner import plan_cells

    config = metafunc.config
    name = config.getoption("compbench_matrix") or config.getini("compbench_matrix") or DEFAULT_MATRIX
    matrix = load_matrix(name)
    labels = [cell["label"] for cell in plan_cells(matrix, ("cpu",))]
    metafunc.parametrize("cell_label", labels, ids=labels)


def test_forward(benchmark, compbench_run, cell_label):
    loaded = compbench_run.load(cell_label, device=None)
    loaded.forward()  # first call outside the timing (lazy initialisation, allocator warm-up)
    benchmark.extra_info.update(cell=loaded.variant.cell_id, run=str(compbench_run.path),
                                shape=list(loaded.inputs["input_ids"].shape), runtime=loaded.model.runtime)
    benchmark(loaded.forward)
