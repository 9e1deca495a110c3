# Manticore Reconciler: every task a developer or CI runs goes through this file.
# `make help` lists the targets. Each target installs what it needs first.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List every target with what it does
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

.PHONY: haproxy
haproxy: ## Install the real haproxy binary from Debian when it is missing
	@command -v haproxy >/dev/null 2>&1 || { \
		echo "installing haproxy (Debian package)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq haproxy >/dev/null; }
	@haproxy -v | head -1

.PHONY: browser
browser: ## Install Debian's chromium (the page's browser tests) when it is missing
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (Debian package)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@chromium --version 2>/dev/null | head -1

.PHONY: install
install: $(STAMP) haproxy browser ## Create the virtualenv, install the project and its tools, haproxy and chromium

.PHONY: run
run: install ## Start the embedded devstack and every controller, and show the system working
	$(BIN)/python -m devstack.demo

.PHONY: lint
lint: $(STAMP) ## ruff lint + format check, and the import-layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

.PHONY: format
format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: typecheck
typecheck: $(STAMP) ## mypy --strict on the packages
	$(BIN)/mypy

.PHONY: schemas
schemas: $(STAMP) ## Regenerate crds-equivalent-schemas/ from the pydantic KV models
	$(BIN)/python -m reconciler.schemas crds-equivalent-schemas

.PHONY: schemas-check
schemas-check: $(STAMP) ## Fail when crds-equivalent-schemas/ is stale
	$(BIN)/python -m reconciler.schemas crds-equivalent-schemas --check

.PHONY: settings-table
settings-table: $(STAMP) ## Regenerate the README's table of Manticore settings
	$(BIN)/python -m controllers.settings README.md

.PHONY: test
test: install lint typecheck schemas-check contract-external ## Install, check, run every test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: contract-external
contract-external: $(STAMP) ## Contract suites in real-agent mode, against devstack processes
	$(BIN)/python tests/run_external_contract.py

.PHONY: bench
bench: install ## Run the benchmarks and write docs/benchmarks.md
	$(BIN)/python -m bench

.PHONY: clean
clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
