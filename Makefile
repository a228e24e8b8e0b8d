# Two entry points, both self-contained on a fresh machine (see README).
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: install run test bench
install: $(VENV)/.installed

run: install            ## daemon on the embedded default: mock board, per-user socket + state dir
	$(VENV)/bin/labd --mock

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install          ## prints JSON numbers; results and their reading: benchmarks/RESULTS.md
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_board.py
