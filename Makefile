# The two commands of the README: `make test` and `make train`.
# Each creates .venv when it is missing and installs what it needs; nothing else is required.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-gpu train bench readme-results clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is the CPU build (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,bench,train]'
	touch $(STAMP)

# Triton kernels run on Triton's interpreter here (tests/conftest.py); tests/test_compile.py
# compiles every kernel for sm_80/sm_90 in a subprocess. On a machine with a GPU the
# `gpu`-marked tests then run against compiled kernels in a session of their own.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then $(MAKE) test-gpu; fi

test-gpu: $(STAMP)
	GPUKERNELS_TEST_GPU=1 $(PY) -m pytest -q -m gpu tests

train: $(STAMP)
	$(PY) -m models.train --model cnn --dataset digits

bench: $(STAMP)
	$(PY) -m benchmarks.run

# The README's results section, from the GPU folders under benchmarks/results/ (CPU ones skip).
readme-results: $(STAMP)
	$(PY) -m benchmarks.readme

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
