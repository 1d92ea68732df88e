# One command for the main job, one for the tests; each does its own setup first.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup run test test-slow bench docs lint

setup:
	bash scripts/setup.sh

run: setup
	$(PY) -m escnn_soft.cli train

test: setup
	$(PY) -m pytest -q -n 2 --durations=15

test-slow: setup
	$(PY) -m pytest -q -m slow --durations=15

bench: setup
	$(PY) -m escnn_soft.cli bench

docs: setup
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

lint: setup
	$(PY) -m ruff check escnn_soft tests examples benchmarks
