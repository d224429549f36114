# goverse (Python): the two commands are `make run` and `make test`; both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# make test's pytest workers: the suite mostly waits on real processes, so two workers on two
# cores halve its time; each file stays on one worker (its module fixtures are shared).
TEST_WORKERS ?= 2

PACKAGES := libs/goverse libs/goverse-server services/gate services/node

.PHONY: help venv protos check-protos docs lint test unit integration e2e run clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): requirements/constraints.txt requirements/dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -r requirements/dev.txt \
		$(addprefix -e ,$(PACKAGES))
	touch $@

venv: $(STAMP) ## Create the virtual environment and install the project into it

protos: $(STAMP) ## Regenerate the Python code of protos/
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP) ## Fail if the generated code is stale
	$(BIN)/python scripts/gen_protos.py --check

docs: $(STAMP) ## Rewrite the settings tables of docs/configuration.md from their declarations
	$(BIN)/python scripts/gen_config_docs.py

lint: $(STAMP) ## ruff and mypy --strict on our code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: check-protos lint chart-check ## Set everything up and run the whole suite
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

unit: $(STAMP) ## Only the unit tests (in process)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP) ## Only the integration tests (real processes of one service)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: $(STAMP) ## Only the end-to-end tests, on local processes
	$(BIN)/pytest tests/e2e --target local $(PYTEST_ARGS)

run: $(STAMP) ## Start a node (state in .run/state.db), a gate on :7100 and a demo client; Ctrl-C stops all
	$(BIN)/python scripts/run_local.py

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

include deploy/deploy.mk
include deploy/e2e.mk
include bench/bench.mk
include scripts/browser/browser.mk
