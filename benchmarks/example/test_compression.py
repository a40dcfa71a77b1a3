"""My model's compression, tested: the matrix in mine.toml runs once per session (compbench_run)."""

import pytest


def test_int8_keeps_99_percent_of_its_accuracy(compbench_run):
    int8 = compbench_run.variant("int8-dynamic*", task="bbc-topic")
    assert int8.retained("accuracy") >= 0.99     # int8 accuracy / baseline accuracy
    assert int8.accuracy_drop <= 1.0             # points, paired on the same held-out examples
    assert int8.size_ratio >= 1.5                # x smaller on disk than the baseline


def test_recommendation_under_my_budget(compbench_run):
    answer = compbench_run.recommend(task="bbc-topic", max_accuracy_drop=1.0, max_size_mb=10)
    assert answer.pick is not None and answer.pick.compressor == "int8-dynamic"


@pytest.mark.parametrize("variant", ["identity", "int8-dynamic*"])
def test_forward_speed(benchmark, compbench_run, variant):
    loaded = compbench_run.load(variant, task="bbc-topic")   # the kept artifact, reloaded
    benchmark(loaded.forward)                                # pytest-benchmark times one forward
