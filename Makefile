# normbench: `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.normbench-installed

.PHONY: run test test-all data docs clean-venv

# The venv is rebuilt only when the project's dependencies change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# Build the fused CPU kernel now (~30 s, once per torch version, source and CPU level), not
	# inside the first run; where it cannot be built, runs go without it and meta.json says why.
	$(BIN)/python -m normbench.kernels
	touch $(STAMP)

data:
	bash scripts/get_data.sh

run: $(STAMP) data
	$(BIN)/normbench run configs/quickstart.yaml

test: $(STAMP) data
	$(BIN)/python -m pytest

# Regenerate docs/config.md and docs/norms.md from the code (tests/test_docs.py fails when stale).
docs: $(STAMP)
	$(BIN)/python -m normbench.docgen

# Everything, the slow end-to-end tests included (GPU tests still skip without CUDA).
test-all: $(STAMP) data
	$(BIN)/python -m pytest -m 'slow or not slow'

clean-venv:
	rm -rf $(VENV)
