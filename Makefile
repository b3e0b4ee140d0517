# The single source of commands: README, CI and contributors call these targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO ?= 1
PYTEST_ARGS ?=

.PHONY: install run up demo test test-unit test-integration test-e2e test-property test-reliability reliability-report lint format proto proto-check bench kcat prometheus clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip check
	@# Sample data: census employment and car loans from the Apache-2.0 nannyml wheel; iris
	@# and diabetes written from scikit-learn's bundled files (BSD-3-Clause).
	$(BIN)/python tools/fetch_data.py
	@touch $(STAMP)

run: install
	$(BIN)/flywheel up $(if $(filter 0,$(DEMO)),,--demo)

up: install
	$(BIN)/flywheel up

lint: install
	$(BIN)/ruff check shared services tests bench tools
	$(BIN)/ruff format --check shared services tests bench tools
	$(BIN)/mypy shared services

format: install
	$(BIN)/ruff format shared services tests bench tools
	$(BIN)/ruff check --fix shared services tests bench tools

proto: install
	$(BIN)/python tools/gen_proto.py

proto-check: install
	$(BIN)/python tools/gen_proto.py --check

test: install lint proto-check kcat prometheus
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest -m "not integration and not e2e and not slow and not reliability" $(PYTEST_ARGS)

test-integration: install kcat
	$(BIN)/pytest -m "integration and not e2e and not reliability and not slow" $(PYTEST_ARGS)

test-e2e: install
	$(BIN)/pytest -m "e2e" $(PYTEST_ARGS)

# The property-based loop (generated contracts and data through every service core): the
# few examples of `make test` plus the slow variant's many.
test-property: install
	$(BIN)/pytest tests/integration/test_property_loop.py $(PYTEST_ARGS)

test-reliability: install
	$(BIN)/pytest -m "reliability" $(PYTEST_ARGS)

# Runs the reliability suite and regenerates docs/reliability.md from its figures.
reliability-report: install
	@mkdir -p var
	@set -o pipefail; $(BIN)/pytest -m "reliability" -s -p no:cacheprovider $(PYTEST_ARGS) \
		| tee var/reliability.log; status=$$?; \
		$(BIN)/python tools/reliability_report.py var/reliability.log && exit $$status

bench: install
	$(BIN)/python -m bench

# kcat from Debian links librdkafka 2.0.2, which cannot parse Tansu's ApiVersions reply;
# tools/kcat runs it against the newer librdkafka bundled in the confluent-kafka wheel.
kcat: install
	@command -v kcat >/dev/null || (apt-get update -qq && apt-get install -y -qq kcat >/dev/null) || echo "kcat not installable here; kcat tests will be skipped"

prometheus:
	@command -v prometheus >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus >/dev/null) || echo "prometheus not installable here; its tests will be skipped"

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
