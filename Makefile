# The two commands of the README: `make test` and `make train`.
# Each creates .venv when it is missing and installs what it needs; nothing else is required.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test train bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is the CPU build (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,bench,train]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

train: $(STAMP)
	$(PY) -m models.train --model cnn --dataset digits

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
