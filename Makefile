# The two commands a new machine needs: `make demo` and `make test`.
# Each creates/updates the virtual environment, installs everything, then runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test setup lint bench clean browser

demo: $(STAMP)
	$(BIN)/curata demo

test: $(STAMP) browser
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

# The web page is tested in a real browser: Debian's chromium (never a downloaded one). Installed when
# missing and apt can (as root, as CI runs); otherwise the browser tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium is not installed and could not be: the browser tests will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Every benchmark (long: about an hour on 2 cores); each prints a table and writes benchmarks/results/.
bench: $(STAMP)
	for b in ingest features accuracy cluster describe colour_names finetune retrieval hybrid search search_open service hostile scale scale_cluster objectstore scale_store curate; do \
		$(BIN)/python benchmarks/$$b.py || exit 1; done
	$(BIN)/python benchmarks/accuracy.py --held-out

clean:
	rm -rf $(VENV) curata-workspace .pytest_cache
