"""``python -m bench``: runs the benchmark scenarios and writes bench/results/<timestamp>.json.

Each scenario runs its bare grpc.aio baseline and the system (goverse-node + goverse-gate
processes on 127.0.0.1) in the same run and prints both, their ratio and the parameters.
Logs of every process (and py-spy profiles with ``--profile``) go to bench/results/<timestamp>/.
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from bench import machine, report
from bench.cluster import BenchTLS, Variant
from bench.procs import ROOT, Procs, uvloop_available
from bench.profiling import py_spy
from bench.results_model import ScenarioResult
from bench.scenarios import (
    AB_SCENARIOS,
    CODE_SCENARIOS,
    LOOP_SCENARIOS,
    NAMES,
    SCENARIOS,
    STATE_PARTS,
    STATE_STORES,
    TLS_SCENARIOS,
    Ctx,
    Settings,
    allocator_problems,
    run_scenario,
)

DEFAULT_OUT = ROOT / "bench" / "results"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item)


def _words(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs to validate the harness")
    parser.add_argument(
        "--scenarios",
        type=_words,
        default=tuple(s for s in SCENARIOS if s not in AB_SCENARIOS),
        help="numbers or names, e.g. 1,2 or state "
        f"({', '.join(f'{n} {k}' for k, n in NAMES.items())}; default: all but "
        f"{','.join(AB_SCENARIOS)}, which need --compare-code)",
    )
    parser.add_argument(
        "--loops",
        type=_words,
        default=None,
        help="event loops of the services: asyncio and/or uvloop (default: both when "
        "uvloop is installed for the bench (make bench does), else asyncio); uvloop repeats "
        f"scenarios {','.join(LOOP_SCENARIOS)}",
    )
    parser.add_argument(
        "--tracing", type=_words, default=None, help="tracing-on modes: otlp, console"
    )
    parser.add_argument("--concurrency", type=_ints, default=None, help="e.g. 1,8,64")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per level")
    parser.add_argument("--push-count", type=int, default=None)
    parser.add_argument("--fanout-clients", type=int, default=None)
    parser.add_argument("--connections", type=_ints, default=None, help="e.g. 1000,5000")
    parser.add_argument(
        "--streams-per-connection",
        type=int,
        default=None,
        help="raw streams multiplexed on one TCP connection in scenarios 3-5 (default 1)",
    )
    parser.add_argument(
        "--state-stores", type=_words, default=None, help="scenario 7: sqlite and/or postgresql"
    )
    parser.add_argument(
        "--state-concurrency", type=_ints, default=None, help="scenario 7, e.g. 1,64"
    )
    parser.add_argument(
        "--state-ids", type=int, default=None, help="scenario 7: objects called round-robin"
    )
    parser.add_argument(
        "--state-parts",
        type=_words,
        default=None,
        help=f"scenario 7: some of {','.join(STATE_PARTS)} (default: all)",
    )
    parser.add_argument(
        "--state-rss-ids", type=int, default=None, help="scenario 7: ids called once (RSS)"
    )
    parser.add_argument(
        "--state-rss-allocators",
        type=_words,
        default=None,
        help="scenario 7: the RSS nodes' allocators, some of pymalloc,malloc,jemalloc,mimalloc "
        "(default: pymalloc,malloc; jemalloc and mimalloc need Debian's libjemalloc2 and "
        "libmimalloc2.0)",
    )
    parser.add_argument(
        "--state-rss-idle",
        type=float,
        default=None,
        help="scenario 7: --idle-timeout of the RSS node, seconds (default: 1.25x the fill "
        "time expected from the calls part; needed without it)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the measured processes with py-spy while scenarios 1, 2, 5, 6, 7, 8, 9 and 11 "
        "measure (numbers perturbed; raw stacks and summaries in the run's profiles/ directory)",
    )
    parser.add_argument(
        "--compare-code",
        type=Path,
        default=None,
        help="a checkout (e.g. `git archive HEAD libs services | tar -x -C DIR`) whose services "
        f"to run too, in scenarios {','.join(CODE_SCENARIOS)}, compared with the work tree",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every hop of the system (client to gate, mutual TLS gate to node; "
        f"certificates of a CA made for the run), scenarios {','.join(TLS_SCENARIOS)} only; "
        "compare with a run without it",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.scenarios = tuple(NAMES.get(s, s) for s in args.scenarios)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)} or {list(NAMES)}")
    if args.state_stores is not None and not set(args.state_stores) <= set(STATE_STORES):
        parser.error(f"--state-stores: choose from {list(STATE_STORES)}")
    if args.state_parts is not None:
        if not set(args.state_parts) <= set(STATE_PARTS):
            parser.error(f"--state-parts: choose from {list(STATE_PARTS)}")
        if (
            "rss" in args.state_parts
            and "calls" not in args.state_parts
            and not args.state_rss_idle
        ):
            parser.error("--state-parts rss without calls needs --state-rss-idle")
    if args.state_rss_allocators and (problems := allocator_problems(args.state_rss_allocators)):
        parser.error(f"--state-rss-allocators: {'; '.join(problems)}")
    if args.tls and not set(args.scenarios) <= set(TLS_SCENARIOS):
        parser.error(f"--tls runs scenarios {','.join(TLS_SCENARIOS)} only")
    if args.loops is None:
        args.loops = ("asyncio", "uvloop") if uvloop_available() else ("asyncio",)
    if "uvloop" in args.loops and not uvloop_available():
        parser.error("uvloop is not installed for the bench: run `make bench-deps`")
    if args.compare_code is None and set(args.scenarios) & set(AB_SCENARIOS):
        parser.error(f"scenarios {','.join(AB_SCENARIOS)} need --compare-code DIR")
    if args.compare_code is not None:
        args.compare_code = args.compare_code.resolve()
        if not (args.compare_code / "services/gate/src").is_dir():
            parser.error(f"{args.compare_code} has no services/gate/src")
    if args.profile and py_spy() is None:
        parser.error("py-spy is not installed: .venv/bin/pip install py-spy")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings.quick_settings() if args.quick else Settings()
    overrides: dict[str, Any] = {
        "concurrency": args.concurrency,
        "duration": args.duration,
        "push_count": args.push_count,
        "fanout_clients": args.fanout_clients,
        "connections": args.connections,
        "streams_per_channel": args.streams_per_connection,
        "tracing": args.tracing,
        "state_stores": args.state_stores,
        "state_concurrency": args.state_concurrency,
        "state_ids": args.state_ids,
        "state_parts": args.state_parts,
        "state_rss_ids": args.state_rss_ids,
        "state_rss_idle": args.state_rss_idle,
        "state_rss_allocators": args.state_rss_allocators,
        "compare_code": str(args.compare_code) if args.compare_code is not None else None,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(s, key, value)
    return s


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run_all(
    ctx: Ctx, args: argparse.Namespace, results: list[ScenarioResult], save: Any
) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    first = args.loops[0]
    tls = BenchTLS.make(ctx.run_dir / "pki") if args.tls else None

    def make_variant(label: str, loop_name: str, code: str = "") -> Variant:
        if tls is not None:
            label = f"{label}-tls"
        return Variant(label, loop_name, code=code, tls=tls)

    plan = [(number, make_variant(first, first)) for number in args.scenarios]
    repeated = [number for number in args.scenarios if number in LOOP_SCENARIOS]
    for loop_name in args.loops[1:]:
        plan += [(number, make_variant(loop_name, loop_name)) for number in repeated]
    if args.compare_code is not None:
        code = make_variant("code", first, code=str(args.compare_code))
        plan += [(number, code) for number in args.scenarios if number in CODE_SCENARIOS]
    for number, variant in plan:
        print(f"-- scenario {number} ({variant.label}) ...", flush=True)
        await run_scenario(ctx, number, variant, results)
        print(report.render(results[-1:], []), flush=True)
        save()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # Ctrl-C must stop the run even when started where SIGINT is ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # The SDK logs with structlog, whose default prints every level to stdout.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / stamp
    json_path = args.out / f"{stamp}.json"
    settings = settings_from(args)
    procs = Procs(run_dir / "logs")
    ctx = Ctx(settings, procs, run_dir, profile=args.profile)
    results: list[ScenarioResult] = []
    document: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(),
        "fd_limit": raise_fd_limit(),
        "settings": settings.to_json(),
        "loops": list(args.loops),
        "compare_code": str(args.compare_code or ""),
        "tls": args.tls,
        "profiled": args.profile,
        "noisy": "numbers are only comparable within one run (ratios); "
        "other load on the machine shows in load_average",
    }

    code = str(args.compare_code or "")

    def save(final: bool = False) -> None:
        done = [*results, *report.comparisons(results, code)]
        document["scenarios"] = [result.to_json() for result in done]
        document["targets"] = [target.to_json() for target in report.targets(done)]
        document["profiles"] = ctx.profiles
        document["complete"] = final
        report.write_json(json_path, document)

    print(f"bench: results {json_path}, logs {run_dir}/logs", flush=True)
    interrupted = False
    try:
        asyncio.run(run_all(ctx, args, results, save))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        print("bench: interrupted; stopping the processes", file=sys.stderr)
    finally:
        procs.stop_all()
    document["machine"]["load_average_at_end"] = machine.load_average()
    save(final=not interrupted)
    done = [*results, *report.comparisons(results, code)]
    print("\n\n######## summary ########")
    print(report.render(done, report.targets(done)))
    print(f"\nbench: wrote {json_path}")
    if ctx.profiles:
        print(f"bench: profiles in {run_dir}/profiles")
    failed = [result.key for result in results if result.error]
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
