# The two commands of the README: `make test` and `make train`.
# Each creates .venv when it is missing and installs what it needs; nothing else is required.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Triton 3.6.0, the version on the project's GPU machine (this machine's .venv has a newer
# one): a second environment in which `make test` compiles the kernels and runs their
# interpreter tests again. Only triton==3.6.0 and NumPy are installed in it (a 190 MB
# download; no torch); a .pth file appends .venv's site-packages AFTER its own, so its triton and NumPy
# win and everything else (torch, pytest, xdist, hypothesis) is .venv's. NumPy < 2.3:
# from 2.3 on, triton 3.6's interpreter fails at a loop bound that is a tensor (it calls
# int() on a 1-element array, which NumPy 2.3+ refuses). Made with .venv's interpreter
# (`$(PY) -m venv` bases the new venv on it), so both share one Python version.
VENV36  := .venv-triton36
PY36    := $(VENV36)/bin/python
STAMP36 := $(VENV36)/.installed
TRITON36 := triton==3.6.0
NUMPY36  := numpy>=2.0,<2.3

.PHONY: test test-gpu test-triton36 train bench readme-results clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is the CPU build (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,bench,train,cpu]'
	touch $(STAMP)

# Triton kernels run on Triton's interpreter here (tests/conftest.py); tests/test_compile.py
# compiles every kernel for sm_80/sm_90 in a subprocess. On a machine with a GPU the
# `gpu`-marked tests then run against compiled kernels in a session of their own.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests
	$(MAKE) --no-print-directory test-triton36
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then $(MAKE) test-gpu; fi

$(STAMP36): Makefile | $(STAMP)
	$(PY) -m venv $(VENV36)
	$(PY36) -m pip install --quiet --disable-pip-version-check --no-deps '$(TRITON36)' '$(NUMPY36)'
	$(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
	  > "$$($(PY36) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_gpukernels_main_venv.pth"
	$(PY36) -c 'import triton, numpy, torch, pytest, xdist; assert triton.__version__ == "3.6.0", triton.__file__; \
	  print("$(VENV36): triton", triton.__version__, "numpy", numpy.__version__, "torch", torch.__version__)'
	touch $(STAMP36)

# Under triton 3.6.0: every kernel and config compiled for sm_90 (the GPU machine's
# architecture; 0 problems, as tests/test_compile.py asks of .venv's triton for sm_80 and
# sm_90), then the interpreter tests of every op family (tests/triton; the others do not
# touch Triton and ran above), with pytest's cache off so .pytest_cache stays the main run's.
# The whole trainings of tests/triton (marker e2e, ~90 s of interpreter time) ran in the
# main pass and are not repeated: they run the kernels whose own tests run here.
test-triton36: $(STAMP36)
	env -u TRITON_INTERPRET $(PY36) -m gpukernels.triton.aot --arch 90 --quiet
	$(PY36) -m pytest -q -n 2 -p no:cacheprovider -m 'not e2e' tests/triton

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
	rm -rf $(VENV) $(VENV36) .pytest_cache build *.egg-info
