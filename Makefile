# childtune: every target builds the in-repo virtualenv on first use.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
DATA_DIR  ?= $(if $(CHILDTUNE_DATA_DIR),$(CHILDTUNE_DATA_DIR),../shared/data)
PROTOCOL  ?= cpu_full
LAUNCHER  ?= hydra/launcher=parallel
export CHILDTUNE_DATA_DIR := $(DATA_DIR)

.PHONY: install test test-unit run reproduce reproduce-tables bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

# One real fine-tuning run on the embedded model (RTE, 64 examples, 1 epoch).
run: $(STAMP)
	$(BIN)/python -m childtune.train task=rte variant=vanilla seed=1 data.n_train=64 trainer.epochs=1

# Every planned run of PROTOCOL (cpu_full, the README's results: 2 jobs side by side, 1 thread
# each) that has no record yet, study by study, then the tables. With every record present it
# only rebuilds the tables. A study that waits for a value still to be chosen (`???` in the
# protocol) stops the sweep there, with the reason: the tables are rebuilt from what is
# recorded, and make fails. Status without running:
# python -m childtune.plan protocol=cpu_full (see experiments/README.md).
reproduce: $(STAMP)
	$(BIN)/python -m childtune.plan protocol=$(PROTOCOL) launch=true launcher='$(LAUNCHER)'; \
	status=$$?; $(BIN)/python -m childtune.aggregate readme=README.md && exit $$status

ARCHIVE   := results/archive/cpu-n1000-34bc358

reproduce-tables: $(STAMP)
	$(BIN)/python -m childtune.aggregate readme=README.md
	$(BIN)/python -m childtune.aggregate results_dir=$(ARCHIVE) readme=README.md

# Speed of the Child-Tuning fast paths, side by side (benchmarks/README.md); writes
# benchmarks/latest.json. bench-quick: the same keys with fewer repeats.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/e2e_table.py --readme

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf .cache .hydra_sweeps .pytest_cache
