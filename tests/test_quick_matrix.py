"""The quick matrix (`make quick`) end to end on the real offline models: its baselines and its chain.

In a file of its own so that pytest-xdist (whole files per worker) runs it beside, not after, the other
end-to-end runs of tests/test_matrices.py.
"""

import pytest

from tests.test_matrices import run_quick


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 4 minutes in a parallel `make test` on 2 cores (the chain trains and prunes)
def test_quick_matrix_end_to_end(tmp_path):
    # The chain and both baselines: int8-dynamic runs on the same models in the quant matrix's test
    # (tests/test_matrices.py), so it is left out here to keep `make test` short.
    ok = run_quick(tmp_path, "quick", "--only", "*/identity/*", "--only", "bbc-topic/*/chain*")
    accuracy = ok[(ok.metric == "accuracy") & (ok.compressor == "identity")].value.iloc[0]
    assert accuracy > 0.6  # 5 topics: chance is 0.2
    perplexity = ok[(ok.metric == "perplexity") & (ok.compressor == "identity")].value.iloc[0]
    assert 5 < perplexity < 100  # SmolLM2 on English news prose
    assert set(ok.compressor) == {"identity", "chain"}
    assert set(ok.task) == {"bbc-topic", "lm-bbc"}
    chain = ok[ok.compressor == "chain"]
    assert set(chain.stage) == {1, 2, 3} and set(chain.task) == {"bbc-topic"}  # each stage measured
    sizes = chain[chain.metric == "size_bytes"].sort_values("stage").value.tolist()
    assert sizes[0] > sizes[1] > sizes[2]  # a 3-layer student, then half of it, then int8
    speedups = chain[chain.metric == "speedup"].sort_values("stage").value.tolist()
    assert len(speedups) == 3  # every stage timed against the teacher in the same process
