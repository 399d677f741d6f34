# Two commands for a newcomer: `make run` (dashboard on a demo workspace) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8501
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test demo bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Builds the demo workspace when the workspace has no runs yet, then serves the dashboard.
run: $(STAMP)
	$(PY) -m ddsm_core demo --if-empty
	@echo "Dashboard: http://$(HOST):$(PORT)"
	$(PY) -m streamlit run streamlit_app.py --server.address $(HOST) --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m ddsm_core demo

bench: $(STAMP)
	$(PY) bench/eval_throughput.py
	$(PY) bench/page_render.py

clean:
	rm -rf $(VENV) .pytest_cache
