# The two commands a new machine needs: `make demo` and `make test`.
# Each creates/updates the virtual environment, installs everything, then runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test setup lint bench clean

demo: $(STAMP)
	$(BIN)/curata demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile

setup: $(STAMP)

# torch is named in the same install as everything else, pinned to the local CPU build, so that no
# other requirement can pull a different (multi-GB CUDA) torch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/features.py

clean:
	rm -rf $(VENV) curata-workspace .pytest_cache
