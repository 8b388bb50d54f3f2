# make demo: run the pair once.  make cluster-demo: the pair on a three-node cluster, one
# node killed.  make test: run the tests.  make test-rabbitmq-4.0 and make test-rabbitmq-4.3:
# run them against RabbitMQ 4.0 or 4.3, in a Debian trixie or forky root (needs root and
# debootstrap).  make lint: the style.
PYTHON ?= python3
BIN := .venv/bin

demo: .venv/installed
	$(BIN)/python tools/demo.py

cluster-demo: .venv/installed
	$(BIN)/python tools/cluster_demo.py

test: .venv/installed-dev
	$(BIN)/python -m pytest $(PYTEST_FLAGS)

# In the roots, the tests of what only the scripts decide are left out (see pyproject.toml).
test-rabbitmq-4.0:
	tools/debian_root.sh trixie make test PYTEST_FLAGS='-m "not script_logic"'

test-rabbitmq-4.3:
	tools/debian_root.sh forky make test PYTEST_FLAGS='-m "not script_logic"'

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

.PHONY: demo cluster-demo test test-rabbitmq-4.0 test-rabbitmq-4.3 lint
