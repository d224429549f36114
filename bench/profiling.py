"""Profiling with py-spy: record the services while a scenario runs, then summarise the stacks.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``). The summary
ranks functions by self time (the leaf frame) and by inclusive time (anywhere on the stack),
and splits samples into categories (grpc, protobuf, logging, asyncio, goverse, ...).

``python -m bench.profiling FILE...`` prints the summary of recorded files.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import PYTHON

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")

ENTRY = "entry (runpy, bench.launch, service main)"
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (ENTRY, ("<frozen runpy>", "bench/launch.py", "/__main__.py", "runtime/_lifecycle.py")),
    ("opentelemetry (tracing, metrics)", ("opentelemetry", "prometheus_client")),
    ("logging (structlog, logging, json)", ("structlog", "/logging/", "/json/")),
    ("protobuf", ("google/protobuf",)),
    ("grpc (python/cython layer)", ("/grpc/",)),
    ("asyncio (event loop, tasks, queues)", ("/asyncio/",)),
    ("uvloop", ("uvloop",)),
    ("goverse", ("/goverse/",)),
    ("bench", ("/bench/",)),
    ("threading", ("/threading.py",)),
)
"""Matched against the full file name of a frame (``py-spy --full-filenames``), first match
wins. Self time in a Python frame that calls into C without a Python frame of its own (grpc's
Cython code, the selector's poll) is counted in that frame's category."""
PY_SPY_ARGS = ("--format", "raw", "--gil", "--full-filenames")
"""``--gil``: only samples of the thread holding the GIL, i.e. where Python CPU time goes."""


def py_spy() -> str | None:
    """The py-spy executable next to the interpreter, or on PATH."""
    beside = Path(PYTHON).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path.removeprefix("/work/main/")


def frame_key(frame: str) -> str:
    """``function (file)`` of a py-spy frame, without the line number."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['func']} ({_short_file(match['file'])})"


def frame_file(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    return match["file"] if match else ""


def category(frame: str) -> str:
    path = frame_file(frame)
    for name, needles in CATEGORIES:
        if any(needle in path for needle in needles):
            return name
    return "other (stdlib, interpreter)"


@dataclass
class Summary:
    samples: int = 0
    own: collections.Counter[str] = field(default_factory=collections.Counter)
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)
    own_category: collections.Counter[str] = field(default_factory=collections.Counter)
    inclusive_category: collections.Counter[str] = field(default_factory=collections.Counter)

    def share(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0

    def top(self, counter: collections.Counter[str], n: int) -> list[tuple[str, float]]:
        return [(key, round(self.share(count), 1)) for key, count in counter.most_common(n)]

    def to_json(self, n: int = 25) -> dict[str, object]:
        return {
            "samples": self.samples,
            "self_top": self.top(self.own, n),
            "inclusive_top": self.top(self.inclusive, n),
            "self_by_category": self.top(self.own_category, 20),
            "inclusive_by_category": self.top(self.inclusive_category, 20),
        }

    def render(self, title: str, n: int = 25) -> str:
        lines = [f"## {title}", "", f"{self.samples} samples (thread holding the GIL)", ""]
        for heading, rows in (
            ("self time by category (% of samples)", self.top(self.own_category, 20)),
            ("inclusive time by category", self.top(self.inclusive_category, 20)),
            ("self time by function", self.top(self.own, n)),
            ("inclusive time by function", self.top(self.inclusive, n)),
        ):
            lines += [f"### {heading}", ""]
            lines += [f"{share:6.1f}%  {key}" for key, share in rows]
            lines.append("")
        return "\n".join(lines)


def summarize(lines: Iterable[str]) -> Summary:
    summary = Summary()
    for raw in lines:
        raw = raw.rstrip("\n")
        if not raw.strip():
            continue
        stack, _, count_text = raw.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [frame for frame in stack.split(";") if frame and "(" in frame]
        if not frames:
            continue
        summary.samples += count
        leaf = frames[-1]
        summary.own[frame_key(leaf)] += count
        summary.own_category[category(leaf)] += count
        for key in {frame_key(frame) for frame in frames}:
            summary.inclusive[key] += count
        for name in {category(frame) for frame in frames} - {ENTRY}:
            summary.inclusive_category[name] += count
    return summary


def summarize_file(path: Path) -> Summary:
    with path.open(errors="replace") as lines:
        return summarize(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for path in args.files:
        print(summarize_file(path).render(str(path), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
