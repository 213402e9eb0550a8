# One command to run the main job, one to run the tests; both set up .venv first.
#   make run    the perception service on the shipped models (REST :8000, gRPC :50051)
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

# open3d (the [train] extra) needs libusb at import time; the viewer's browser test drives Debian's chromium
# through chromedriver. Docker images also need libgl1 libgomp1.
SYSTEM_PACKAGES := libusb-1.0-0 chromium chromium-driver
system-deps:
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES); }

run: $(VENV)/.runtime-installed
	$(BIN)/perception serve

test: system-deps $(VENV)/.test-installed
	$(BIN)/ruff check perception tests benchmarks
	$(BIN)/python -m pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check perception tests benchmarks
	$(BIN)/ruff format --check perception tests benchmarks

bench: $(VENV)/.runtime-installed
	$(BIN)/perception bench all

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
