"""pytest-benchmark suites of compbench (not part of `make test`: pyproject's testpaths is tests/).

    pytest benchmarks/ --compbench-matrix quick --compbench-keep-artifacts --benchmark-autosave

example/ is the README's copy-paste example for users' own suites; it has its own pytest.ini
and runs from its folder (cd benchmarks/example && pytest).
"""

collect_ignore = ["example"]
