# End-to-end targets: the shared scenarios (tests/e2e/test_scenarios.py) on Docker and on kind.
# `make test` runs them on the `local` target (processes). Scripts: scripts/e2e/; the targets:
# tests/e2e/targets/; docs/deploy.md, "End-to-end tests".
E2E_ARGS ?= -v

.PHONY: e2e-docker e2e-kind e2e-docker-clean

e2e-docker: $(STAMP) chart-tools images etcd-image ## Run the e2e scenarios on containers made from the chart's helm template output, with an etcd container
	$(BIN)/pytest tests/e2e/test_scenarios.py --target docker $(E2E_ARGS) $(PYTEST_ARGS)

e2e-kind: ## Run the e2e scenarios on a kind cluster with the chart installed (needs kind)
	scripts/e2e/kind.sh --preflight
	$(MAKE) --no-print-directory $(STAMP) chart-tools images
	PYTEST=$(BIN)/pytest PYTEST_ARGS="$(PYTEST_ARGS)" scripts/e2e/kind.sh

e2e-docker-clean: ## Remove containers and networks that killed e2e docker runs left behind
	scripts/e2e/docker-clean.sh
