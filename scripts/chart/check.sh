#!/usr/bin/env bash
# The chart checks (`make chart-check`), offline, with the pinned tools of install-tools.sh:
#   0. every value in values.yaml has a `# --` comment; every object of values.schema.json
#      closes its keys (lint_values.py);
#   1. helm lint --strict, with the defaults and with every ci/*-values.yaml;
#   2. helm template for the same values files, into build/chart/<name>.yaml, and a client-side
#      install dry run that renders NOTES.txt;
#   3. strict validation of every rendered manifest against the Kubernetes schemas of the
#      minimum supported version and of the newest version kubernetes-validate ships
#      (validate.py; the ServiceMonitor CRD is checked by hand there), and of the wiring
#      (wiring.py: node list or etcd endpoints, the bundled etcd, advertise, gate id, probes,
#      grace period and handoff budget, config checksum, autoscalers, the store URL and
#      password file); every values file is rendered again with other replica counts: with
#      etcd membership no gate or node pod template may change (scaling.py); and rendered from
#      a copy of the chart with another version: no pod template may change (bump.py);
#   4. every scripts/chart/bad-values/*.yaml must make helm template fail with the message in
#      its `# expect:` line (schema: unknown keys, wrong types; `fail`: bad combinations), and
#      without printing the text of its `# never:` line if it has one (a password);
#      the schema cases must make helm lint fail too (lint only logs a template's `fail`).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
CHART=deploy/helm/goverse
OUT=build/chart
HELM=build/tools/bin/helm
PY=build/tools/venv/bin/python
# Native gRPC probes are on by default from 1.27 (GRPCContainerProbe beta); the chart's
# kubeVersion says the same.
K8S_MINIMUM=1.27.0
# The newest schemas kubernetes-validate (deploy/chart-tools.txt) ships.
K8S_CURRENT=1.37.0
RELEASE=goverse
NAMESPACE=goverse

started=$SECONDS
scripts/chart/install-tools.sh
rm -rf "$OUT"
mkdir -p "$OUT"

step() { echo "== $*"; }

step "values documented, schema closed"
"$PY" scripts/chart/lint_values.py "$CHART"

step "helm lint --strict"
for values in "$CHART"/ci/*-values.yaml; do
    "$HELM" lint --strict --quiet "$CHART" --namespace "$NAMESPACE" --values "$values" >"$OUT/lint.log" 2>&1 \
        || { cat "$OUT/lint.log"; echo "FAIL: helm lint with $values"; exit 1; }
    echo "ok   $values"
done

step "helm template"
for values in "$CHART"/ci/*-values.yaml; do
    name="$(basename "$values" -values.yaml)"
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --values "$values" \
        >"$OUT/$name.yaml"
    # NOTES.txt is rendered only by install: a client-side dry run renders it, offline.
    "$HELM" install "$RELEASE" "$CHART" --namespace "$NAMESPACE" --values "$values" \
        --dry-run=client >"$OUT/$name.install.txt"
    grep -q '^NOTES:' "$OUT/$name.install.txt" || { echo "FAIL: no NOTES with $values"; exit 1; }
    echo "ok   $values -> $OUT/$name.yaml ($(grep -c '^kind:' "$OUT/$name.yaml") objects, NOTES)"
done

step "kubernetes schemas (strict) $K8S_MINIMUM and $K8S_CURRENT"
"$PY" scripts/chart/validate.py -k "$K8S_MINIMUM" -k "$K8S_CURRENT" "$OUT"/*.yaml

step "wiring"
"$PY" scripts/chart/wiring.py "$OUT"/*.yaml

step "scaling: what other replica counts restart"
# Other gate and node counts and autoscaler bounds than any ci/*-values.yaml uses.
SCALED=node.replicaCount=7,gate.replicaCount=5
SCALED+=,node.autoscaling.minReplicas=3,node.autoscaling.maxReplicas=9
SCALED+=,gate.autoscaling.minReplicas=3,gate.autoscaling.maxReplicas=9
mkdir -p "$OUT/scaled"
pairs=()
for values in "$CHART"/ci/*-values.yaml; do
    name="$(basename "$values" -values.yaml)"
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --values "$values" \
        --set "$SCALED" >"$OUT/scaled/$name.yaml"
    pairs+=("$OUT/$name.yaml" "$OUT/scaled/$name.yaml")
done
"$PY" scripts/chart/scaling.py "${pairs[@]}"

step "chart bump: no pod restarts"
# A copy of the chart with another version: the pod templates must not change.
rm -rf "$OUT/bumped-chart"
mkdir -p "$OUT/bumped-chart" "$OUT/bumped"
cp -r "$CHART" "$OUT/bumped-chart/goverse"
sed -i 's/^version: .*/version: 99.99.99/' "$OUT/bumped-chart/goverse/Chart.yaml"
pairs=()
for values in "$CHART"/ci/*-values.yaml; do
    name="$(basename "$values" -values.yaml)"
    "$HELM" template "$RELEASE" "$OUT/bumped-chart/goverse" --namespace "$NAMESPACE" \
        --values "$values" >"$OUT/bumped/$name.yaml"
    pairs+=("$OUT/$name.yaml" "$OUT/bumped/$name.yaml")
done
"$PY" scripts/chart/bump.py "${pairs[@]}"

step "values that must be refused"
failed=0
for values in scripts/chart/bad-values/*.yaml; do
    expect="$(sed -n 's/^# expect: //p' "$values" | head -n 1)"
    never="$(sed -n 's/^# never: //p' "$values" | head -n 1)"
    if "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --values "$values" \
        >/dev/null 2>"$OUT/refused.log"; then
        echo "FAIL: helm template accepted $values"
        failed=1
        continue
    fi
    if ! grep -qF -- "$expect" "$OUT/refused.log"; then
        echo "FAIL: $values was refused, but not with \"$expect\":"
        cat "$OUT/refused.log"
        failed=1
        continue
    fi
    if [[ -n "$never" ]] && grep -qF -- "$never" "$OUT/refused.log"; then
        echo "FAIL: the refusal of $values prints \"$never\":"
        cat "$OUT/refused.log"
        failed=1
        continue
    fi
    # helm lint only logs `fail` (lint mode), so only the schema cases must fail it too.
    if grep -q "specifications of the schema" "$OUT/refused.log" \
        && "$HELM" lint --quiet "$CHART" --namespace "$NAMESPACE" --values "$values" >/dev/null 2>&1; then
        echo "FAIL: helm lint accepted $values"
        failed=1
        continue
    fi
    echo "ok   $values: $expect"
done
# The chart's kubeVersion: a cluster older than the minimum is refused.
if "$HELM" template "$RELEASE" "$CHART" --kube-version 1.26.0 >/dev/null 2>&1; then
    echo "FAIL: helm template accepted Kubernetes 1.26 (below the minimum $K8S_MINIMUM)"
    failed=1
else
    echo "ok   --kube-version 1.26.0: below the chart's kubeVersion"
fi
((failed == 0)) || exit 1

echo "chart checks passed in $((SECONDS - started))s"
