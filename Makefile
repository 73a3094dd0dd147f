# Two commands from nothing: `make test` and `make demo`. Both create .venv on first use.
# torch is installed first and pinned to the build the suite is tested with (here pip takes it from a local
# CPU wheel): pyproject.toml only asks for a range, so that installing minirlvr keeps a CUDA machine's torch,
# and an open `torch` requirement on a fresh venv would pull a multi-GB CUDA build.
PY ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-gpu demo clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[dev,plot]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

# The CUDA checks alone (tests/test_cuda.py); they skip without a GPU. On a GPU machine: make test-gpu TORCH=torch
test-gpu: $(STAMP)
	$(BIN)/python -m pytest tests/test_cuda.py -rs

demo: $(STAMP)
	$(BIN)/python demo.py

clean:
	rm -rf $(VENV) .pytest_cache
