# One command to run the main job, one to run the tests; both set up .venv first.
#   make run    perception on the bundled sample (the service once models ship)
#   make test   the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0

.PHONY: run test lint bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_CPU)
	$(BIN)/pip install --quiet -e '.[dev,train,ros]'
	touch $@ $(VENV)/.runtime-installed

# open3d (the [train] extra) needs libusb at import time; Docker images also need libgl1 libgomp1.
system-deps:
	@dpkg -s libusb-1.0-0 >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libusb-1.0-0; }

run: $(VENV)/.runtime-installed
	$(BIN)/perception project sim_data/sample/velodyne/000000.bin \
	  --labels sim_data/sample/labels/000000.label --sensor kitti-front --out out/sample_000000.npy

test: system-deps $(VENV)/.test-installed
	$(BIN)/ruff check perception tests
	$(BIN)/python -m pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check perception tests
	$(BIN)/ruff format --check perception tests

bench: $(VENV)/.runtime-installed
	$(BIN)/perception bench all

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
