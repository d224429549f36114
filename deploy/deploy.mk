# Container images and Helm chart targets; the main Makefile includes this file.
# Scripts: scripts/docker/ (images) and scripts/chart/ (chart checks); docs/deploy.md.
# None of these needs the project's virtual environment: they use $(PYTHON) (3.11+) directly.

.PHONY: images etcd-image docker-engine base-image wheelhouse chart-tools chart-check

images: ## Build the goverse-gate and goverse-node images (starts a Docker engine if needed)
	PYTHON=$(PYTHON) scripts/docker/build.sh

etcd-image: ## Build goverse-etcd, the single-member etcd of the e2e docker target (no pull needed)
	PYTHON=$(PYTHON) scripts/docker/etcd-image.sh

docker-engine: ## Install (Debian docker.io) and start a Docker engine when none answers
	scripts/docker/engine.sh

base-image: ## Find or make (debootstrap) a local Python 3.11 base image; print its name
	scripts/docker/base-image.sh

wheelhouse: ## Download the images' wheels on the host into build/wheelhouse
	PYTHON=$(PYTHON) scripts/docker/wheelhouse.sh

chart-tools: ## Install the pinned helm, kubectl and kubernetes-validate into build/tools
	PYTHON=$(PYTHON) scripts/chart/install-tools.sh

chart-check: ## Lint, render and validate the Helm chart (strict schemas of Kubernetes 1.27 and 1.37)
	PYTHON=$(PYTHON) scripts/chart/check.sh
