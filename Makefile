# attnviz: two commands for a newcomer.
#   make lab    create .venv if needed, install attnviz with its notebook extras, open JupyterLab
#   make test   create .venv if needed and run the whole test suite
#   make app    every explorer on the shipped trained models, in one page (Voila, 127.0.0.1:8866)
# Other targets: make test-fast (the daily loop), make demo (HTML gallery of every notebook), make bench, make lint,
# make models (retrain the shipped models from scratch), make clean-venv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnviz-installed
PYTEST_ARGS ?=

.PHONY: lab app test test-fast lint bench demo models venv clean-venv

venv: $(STAMP)

# Re-installs when pyproject.toml changes. pip honours PIP_CONSTRAINT if CI sets one.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -e ".[notebooks,dev]"
	touch $(STAMP)

lab: $(STAMP)
	$(PY) -m ipykernel install --user --name attnviz --display-name "Python (attnviz)"
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

app: $(STAMP)
	$(VENV)/bin/attnviz app $(APP_ARGS)

# Retrains every shipped model (assets/models) by its recipe and rewrites the manifest
# (about 15 minutes on a 2-core CPU; MODELS_ARGS="--only resnet10_se --device cuda").
models: $(STAMP)
	$(VENV)/bin/attnviz models --regenerate $(MODELS_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The daily loop: everything but the notebooks, the browser and the slow sweeps (~2 minutes).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/run.py

# Runs every notebook headless (QUICK = True; DEMO_ARGS=--full for the full runs) and
# writes the executed notebooks and an HTML gallery to build/demo/.
demo: $(STAMP)
	$(VENV)/bin/attnviz demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
