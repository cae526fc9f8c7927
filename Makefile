# memfail: `make run` runs the main job, `make test` runs the tests. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean setup system fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# QEMU, busybox, gcc and Debian's 6.1 kernel for `memfail conform` (idempotent; quick when done)
system:
	sh scripts/setup-system.sh

run: $(STAMP) system
	$(BIN)/memfail compare

test: $(STAMP) system
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

fuzz: $(STAMP)
	MEMFAIL_FUZZ_EXAMPLES=$${MEMFAIL_FUZZ_EXAMPLES:-300} $(BIN)/pytest -q -p no:randomly tests/test_fuzz.py

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info
