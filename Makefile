# `make test` and `make demo` set themselves up on a fresh Debian machine: missing Debian
# packages, then .venv with the project and its extras. Both are quiet when all is there.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test demo bench docs lint clean install-agent install-gateway

setup: $(STAMP)
	@scripts/setup-system.sh

$(STAMP): pyproject.toml
	@scripts/setup-system.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@$(BIN)/pip install -q -e '.[agent,gateway,dev]'
	@touch $(STAMP)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

demo: setup
	$(BIN)/room-gateway demo

bench: setup
	$(BIN)/python tests/benchmarks/pipeline.py
	$(BIN)/python tests/benchmarks/vad_quality.py
	$(BIN)/python tests/benchmarks/uplink_drain.py
	$(BIN)/python tests/benchmarks/gateway_ingest.py
	$(BIN)/python tests/benchmarks/notify_latency.py

docs: setup
	$(BIN)/python scripts/config_reference.py

install-agent:
	scripts/install.sh agent

install-gateway:
	scripts/install.sh gateway

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
