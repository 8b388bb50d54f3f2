# make demo: run the pair once.  make cluster-demo: the pair on a three-node cluster, one
# node killed.  make test: run the tests.  make lint: check the style.
PYTHON ?= python3
BIN := .venv/bin

demo: .venv/installed
	$(BIN)/python tools/demo.py

cluster-demo: .venv/installed
	$(BIN)/python tools/cluster_demo.py

test: .venv/installed-dev
	$(BIN)/python -m pytest

lint: .venv/installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.venv/installed: requirements.txt
	$(PYTHON) -m venv .venv
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

.venv/installed-dev: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv .venv
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@ .venv/installed

.PHONY: demo cluster-demo test lint
