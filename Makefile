# `make test` and `make demo` set themselves up on a fresh Debian machine: missing Debian
# packages, then .venv with the project and its extras. Both are quiet when all is there.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest's worker processes; a test file runs whole on one worker (its servers are shared).
TEST_WORKERS ?= 2

.PHONY: setup test demo bench docs lint lock clean install-agent install-gateway field-test

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
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: setup
	$(BIN)/room-gateway demo

bench: setup
	$(BIN)/python tests/benchmarks/pipeline.py
	$(BIN)/python tests/benchmarks/vad_quality.py
	$(BIN)/python tests/benchmarks/uplink_drain.py
	$(BIN)/python tests/benchmarks/gateway_ingest.py
	nice -n 5 $(BIN)/python tests/benchmarks/ingest_limit.py
	$(BIN)/python tests/benchmarks/notify_latency.py

docs: setup
	$(BIN)/python scripts/config_reference.py

# The lock files scripts/install.sh installs the service from: every dependency pinned,
# with hashes. Run after changing pyproject.toml's dependencies (tests/test_lock_files.py
# fails until then); `make lock UPGRADE=1` moves every pin to the newest allowed release.
lock: setup
	@$(BIN)/pip install -q 'pip-tools>=7.4'
	@for extra in agent gateway; do \
	    $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	        --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) \
	        --extra=$$extra --output-file=requirements/$$extra.lock pyproject.toml; \
	done

install-agent:
	scripts/install.sh agent

# The README followed literally on fresh Debian 12 roots, as root (not part of make test).
field-test: setup
	scripts/fresh-root-test.sh

install-gateway:
	scripts/install.sh gateway

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
