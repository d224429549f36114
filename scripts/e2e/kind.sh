#!/usr/bin/env bash
# `make e2e-kind`: the shared e2e scenarios on a real Kubernetes cluster made with kind.
#   1. creates the kind cluster from tests/e2e/kind/cluster.yaml (its own kubeconfig in
#      build/e2e/kind/, the user's ~/.kube/config is left alone);
#   2. loads the images `make images` built (`kind load docker-image`);
#   3. `helm install --wait` of deploy/helm/goverse with tests/e2e/kind/values.yaml;
#   4. runs tests/e2e/test_scenarios.py --target kind (port-forwards to the gate pods;
#      tests/e2e/targets/kind.py), `helm test` included;
#   5. on failure writes `kubectl get/describe`, events and every pod's logs to build/e2e/kind/;
#   6. deletes the cluster (KEEP_CLUSTER=1 keeps it).
#
#   scripts/e2e/kind.sh --preflight   # only check that kind and docker are there (exit 2 if not)
#
# Variables: KIND_CLUSTER_NAME (goverse-e2e), KIND_NODE_IMAGE (kind's default), KEEP_CLUSTER,
# PYTEST (.venv/bin/pytest), PYTEST_ARGS. The make target installs the venv, the chart tools and
# the images first.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
CLUSTER="${KIND_CLUSTER_NAME:-goverse-e2e}"
CONTEXT="kind-$CLUSTER"
NAMESPACE=goverse
RELEASE=goverse
OUT=build/e2e/kind
HELM=build/tools/bin/helm
KUBECTL=build/tools/bin/kubectl
PYTEST="${PYTEST:-.venv/bin/pytest}"

say() { echo "[e2e-kind] $*" >&2; }

missing=()
command -v kind >/dev/null 2>&1 \
    || missing+=("kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)")
command -v docker >/dev/null 2>&1 || missing+=("docker")
if ((${#missing[@]})); then
    say "cannot run: ${missing[*]} not installed."
    say "The kind target needs kind and a Docker engine that can pull kind's node image and the"
    say "collector image (otel/opentelemetry-collector). docs/deploy.md, 'End-to-end tests'."
    exit 2
fi
if [[ "${1:-}" == "--preflight" ]]; then
    exit 0
fi
for tool in "$HELM" "$KUBECTL" "$PYTEST"; do
    [[ -x "$tool" ]] || { say "$tool is missing: run make venv chart-tools"; exit 2; }
done

version="$(python3 -c 'import tomllib; print(tomllib.load(open("services/gate/pyproject.toml", "rb"))["project"]["version"])')"
mkdir -p "$OUT"
export KUBECONFIG="$ROOT/$OUT/kubeconfig"

collect() {
    say "collecting the cluster's state into $OUT/"
    "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" get all,events,networkpolicies,pdb -o wide \
        >"$OUT/get.txt" 2>&1 || true
    "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" get events --sort-by=.lastTimestamp \
        >"$OUT/events.txt" 2>&1 || true
    "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" describe pods >"$OUT/describe-pods.txt" 2>&1 || true
    "$HELM" --kube-context "$CONTEXT" -n "$NAMESPACE" status "$RELEASE" >"$OUT/helm-status.txt" 2>&1 || true
    local pod
    for pod in $("$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" get pods -o name 2>/dev/null); do
        "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" logs "$pod" --all-containers \
            >"$OUT/logs-${pod#pod/}.txt" 2>&1 || true
        "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" logs "$pod" --all-containers --previous \
            >"$OUT/logs-${pod#pod/}.previous.txt" 2>/dev/null || rm -f "$OUT/logs-${pod#pod/}.previous.txt"
    done
    tail -n 40 "$OUT/events.txt" >&2 || true
}

finish() {
    local code=$?
    trap - EXIT INT TERM
    if ((code != 0)); then
        collect
    fi
    if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
        say "keeping the cluster: KUBECONFIG=$KUBECONFIG; kind delete cluster --name $CLUSTER"
    else
        say "deleting the cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    fi
    exit "$code"
}
trap finish EXIT
trap 'exit 130' INT TERM

started=$SECONDS
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "reusing the kind cluster $CLUSTER"
    kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
    say "creating the kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --config tests/e2e/kind/cluster.yaml \
        --kubeconfig "$KUBECONFIG" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
say "loading goverse-node:$version and goverse-gate:$version"
kind load docker-image --name "$CLUSTER" "goverse-node:$version" "goverse-gate:$version"
say "helm install --wait"
"$HELM" upgrade --install "$RELEASE" deploy/helm/goverse --kube-context "$CONTEXT" \
    --namespace "$NAMESPACE" --create-namespace --values tests/e2e/kind/values.yaml \
    --wait --timeout 5m
say "running the scenarios"
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
GOVERSE_E2E_KUBE_CONTEXT="$CONTEXT" GOVERSE_E2E_NAMESPACE="$NAMESPACE" GOVERSE_E2E_RELEASE="$RELEASE" \
    "$PYTEST" tests/e2e/test_scenarios.py --target kind -v ${PYTEST_ARGS:-}
say "passed in $((SECONDS - started))s"
