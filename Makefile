# The two set-up commands: `make demo` and `make test`. Each builds .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt proto proto-check bench gpu-check gpu-stage clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/neuroserve demo

test: $(STAMP) proto-check lint
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: $(STAMP)
	$(BIN)/python -m serving.codegen

proto-check: $(STAMP)
	$(BIN)/python -m serving.codegen --check

bench: $(STAMP)
	$(BIN)/python -m bench

# On a machine with an NVIDIA GPU: tests marked gpu, MNIST on CUDA, the GPU serving benchmark,
# the table into README.md (bench/gpu_check.sh says how; its own Python, not .venv's CPU torch).
gpu-check:
	bash bench/gpu_check.sh

# Here, for a GPU machine without a registry: wheels packed and split per device call.
gpu-stage: $(STAMP)
	bash bench/gpu_stage.sh

clean:
	rm -rf $(VENV) build *.egg-info
