# Two entry points, both self-contained on a fresh machine (see README).
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: install run test bench browser
install: $(VENV)/.installed

browser:                ## headless Chromium for the dashboard tests (Debian's; never `playwright install`)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else echo "no chromium and not root: the browser tests will skip (apt-get install chromium)"; fi; }

run: install            ## daemon on the embedded default: mock board, per-user socket + state dir
	$(VENV)/bin/labd --mock

test: install browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install          ## prints JSON numbers; results and their reading: benchmarks/RESULTS.md
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_board.py
	$(PY) benchmarks/bench_web.py
