# Two commands for a newcomer: `make run` (dashboard on a demo workspace) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8501
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test test-fast lint demo bench clean

# The library is installed editable (pip install -e .), so jobs, tests and benchmarks need no PYTHONPATH.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Builds the demo workspace when the workspace has no runs yet, then serves the dashboard. Served beyond
# 127.0.0.1 it needs sign-in configured in .streamlit/secrets.toml (see dashboard/auth.py), or ALLOW_OPEN=1.
run: $(STAMP)
	DDSM_ALLOW_OPEN="$(ALLOW_OPEN)" $(PY) -m dashboard.auth check-serve --host "$(HOST)"
	$(PY) -m ddsm_core demo --if-empty
	@echo "Dashboard: http://$(HOST):$(PORT)"
	DDSM_ALLOW_OPEN="$(ALLOW_OPEN)" $(PY) -m streamlit run streamlit_app.py --server.address $(HOST) \
		--server.port $(PORT) --server.headless true --browser.gatherUsageStats false

# The whole suite: the linter, then every test (unit, AppTest pages, real training, headless Chromium).
test: lint
	$(PY) -m pytest

# Everything not marked slow: the quick loop while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m ddsm_core demo

bench: $(STAMP)
	$(PY) bench/eval_throughput.py
	$(PY) bench/page_render.py
	$(PY) bench/train_throughput.py
	# small, printed only: docs/PERFORMANCE.md keeps the recorded large run (see its "Scale" section)
	$(PY) bench/scale.py --n-train 1000 --n-test 300 --no-write

clean:
	rm -rf $(VENV) .pytest_cache
