"""Generates the Python code of protos/ into libs/goverse/src, or checks that it is current."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "libs" / "goverse" / "src"
# mypy-protobuf's plugins live beside the interpreter of the virtual environment.
BIN = Path(sys.executable).parent
# Packages whose every file is generated: the check compares them whole.
GENERATED_PACKAGES = ("goverse/v1", "goverse/examples/v1")


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    for package in GENERATED_PACKAGES:
        (out / package).mkdir(parents=True, exist_ok=True)
        (out / package / "__init__.py").write_text('"""Generated from protos/; do not edit."""\n')
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def differences(expected: Path, actual: Path) -> list[str]:
    found: list[str] = []
    for package in GENERATED_PACKAGES:
        want, have = expected / package, actual / package
        names = {p.name for p in want.iterdir()} | (
            {p.name for p in have.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
            if have.is_dir()
            else set()
        )
        for name in sorted(names):
            a, b = want / name, have / name
            if not a.exists() or not b.exists() or not filecmp.cmp(a, b, shallow=False):
                found.append(f"{package}/{name}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args()
    if not args.check:
        for package in GENERATED_PACKAGES:
            shutil.rmtree(OUT_ROOT / package, ignore_errors=True)
        generate(OUT_ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = differences(Path(tmp), OUT_ROOT)
    if stale:
        print("generated code is stale; run `make protos` and commit:", file=sys.stderr)
        for name in stale:
            print(f"  libs/goverse/src/{name}", file=sys.stderr)
        return 1
    print("generated code is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
