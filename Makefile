# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pcr-installed
SLURM_STAMP := $(VENV)/.pcr-slurm-installed

# Python caches compiled modules (__pycache__) unless PYTHONDONTWRITEBYTECODE is set, as it is in some CI
# images: then every process compiles torch and diffusers again, 15.6 s to import them here against 6-7 s.
# The tests and the workflow start many processes (snakemake runs, a SLURM job each), so the cache is kept on.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup run test test-slurm lint clean-results

# Installs pcr (editable) with the exact tested versions; redone when the requirements change.
# --no-compile: Python compiles what is imported when it is first imported, not all of torch up front
# (a fresh set-up took about a minute less).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# the [slurm] extra: Snakemake's SLURM executor plugin
$(SLURM_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e '.[test,slurm]'
	touch $(SLURM_STAMP)

# ends with where the run's time went (results/tables/run_time.md: Snakemake's benchmark files per rule)
run: setup
	$(BIN)/snakemake --cores 1 all
	@cat results/tables/run_time.md

# one worker per core (at most 4): each test process runs torch on one thread
test: lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

# The tiny DAG through a real single-node SLURM cluster brought up on this machine (needs root and apt:
# the test runs .ci/slurm/up.sh), checked against a local run; `make test` skips it. Prints its times.
test-slurm: $(SLURM_STAMP)
	PCR_SLURM_TEST=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_slurm.py

# Python (ruff), the workflow's format (snakefmt) and Snakemake's own best-practice check
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results logs .snakemake
