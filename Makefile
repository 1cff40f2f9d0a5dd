# Two commands on a fresh Linux or macOS machine with Python 3.10+:
#   make train   set up .venv once, then train d2l's run (on the GPU where there is one)
#   make test    set up .venv once, with PyTorch's CPU build, then run the test suite
# Arguments pass through: make train ARGS="--epochs 2 --limit-train 512 ..."; make test PYTEST="-m 'not slow'"

PYTHON ?= python3
VENV ?= .venv
ARGS ?=
PYTEST ?=
# Test processes (pytest-xdist; a test file stays in one process, so its fixtures run once).
WORKERS ?= 2
# The tests need torch, never its CUDA build: PyTorch's CPU index (empty: uv's own sources,
# PyPI and any UV_FIND_LINKS folder).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0
# jax's CUDA plugin where an NVIDIA driver is found: cuda13 or cuda12, as the driver supports.
CUDA_MAJOR := $(shell nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p')
JAX_EXTRA := $(if $(CUDA_MAJOR),$(if $(filter 12,$(CUDA_MAJOR)),cuda12,cuda13),)

BIN := $(VENV)/bin
# uv installs into the venv (it is installed there first): 23 s against pip's 65 s for torch
# and the test extra on 2 cores, the same versions (benchmarks/NOTES.md 43). Byte-compiled as
# pip does, so that a process started with PYTHONDONTWRITEBYTECODE compiles nothing it imports.
PIP_INSTALL = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python

# A second Python, checked without PyTorch (its CPU wheel is on hand for one Python only):
# make check-python PYTHON=python3.13 VENV=.venv-3.13
CHECK_RUN ?= runs/check-python
# Its tests: the run and evaluate cover the training path (the run on tfds' source where
# TensorFlow installs, augmentation, checkpoints, records; evaluate restores on the release
# files, TensorFlow's import and tfds' read being the run's);
# these files cover what depends most on the Python version besides (argparse's messages,
# urllib's errors, the CLI's re-exec, reading the release files, event files, the library).
CHECK_TESTS := tests/test_cli.py tests/test_faults.py tests/test_data.py tests/test_download.py \
	tests/test_layout.py tests/test_progress.py tests/test_observe.py tests/test_library.py
DATA_ARG := $(if $(FASHION_MNIST_DIR),--manual-dir $(FASHION_MNIST_DIR))

.PHONY: train test test-fast test-equivalence check-python

train: $(VENV)/.installed-train
	$(BIN)/alexnet-jax train $(ARGS)

# libtpu (Linux only), for the test that compiles the steps for a TPU slice without one: in a
# folder of its own, so that it loads only into that test's child process (in the venv it
# would slow every JAX start by a second). The version is the one jax[tpu] pins.
TPU_AOT_DIR ?= .tpu-aot
TPU_AOT := $(if $(filter Linux,$(shell uname -s)),$(TPU_AOT_DIR)/.installed)
LIBTPU_PIN = $$($(BIN)/python -c "import importlib.metadata as m; print(next(r.split(';')[0] \
	for r in m.requires('jax') if r.startswith('libtpu')))")

test: $(VENV)/.installed-test $(TPU_AOT)
	$(BIN)/ruff check .
	$(if $(TPU_AOT),ALEXNET_JAX_TPU_AOT_DIR=$(abspath $(TPU_AOT_DIR))) \
		$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile $(PYTEST)

$(TPU_AOT_DIR)/.installed: pyproject.toml | $(VENV)/.installed-test
	$(PIP_INSTALL) --no-deps --upgrade --target $(TPU_AOT_DIR) "$(LIBTPU_PIN)"
	touch $@

# JAX against d2l's PyTorch code alone, on whatever device JAX has (a GPU where one is found).
test-equivalence: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile -m equivalence $(PYTEST)

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile -m "not slow" $(PYTEST)

check-python: $(VENV)/.installed-base
	$(BIN)/python --version
	rm -rf $(CHECK_RUN)
	$(BIN)/alexnet-jax train --workdir $(CHECK_RUN) --limit-train 32 \
		--limit-test 32 --batch-size 8 --epochs 1 --augment $(DATA_ARG)
	$(BIN)/alexnet-jax evaluate --workdir $(CHECK_RUN) --source idx $(DATA_ARG)
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile \
		-m "not slow and not torch" $(CHECK_TESTS) $(PYTEST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Its own target, so that a venv made before the Makefile used uv gets it too.
$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install -q uv

$(VENV)/.installed-train: pyproject.toml | $(BIN)/uv
	$(PIP_INSTALL) -e ".$(if $(JAX_EXTRA),[$(JAX_EXTRA)])"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/uv
	$(PIP_INSTALL) torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP_INSTALL) -e ".[test]"
	touch $@

$(VENV)/.installed-base: pyproject.toml | $(BIN)/uv
	$(PIP_INSTALL) -e ".[test-base]"
	touch $@
