# genmod developer entry points. `make test` works on a fresh machine with python3 + pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-all lint format demo bench gpu-wheels clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install  ## default suite (excludes `slow` and `gpu`), ~minutes on 2 cores
	$(PY) -m pytest -q

test-slow: install  ## the long tests only
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

demo: install  ## train the default experiment (two moons, KDE, CPU, about a minute)
	$(VENV)/bin/genmod-train

bench: install
	$(PY) scripts/bench_kde.py

gpu-wheels: install  ## the pure-Python packages the GPU image lacks, for scripts/gpu_check.sh
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip wheel -q --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 \
		antlr4-python3-runtime==4.9.3 pykeops==2.3 keopscore==2.3

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
