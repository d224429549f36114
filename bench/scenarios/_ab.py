"""Scenario 10, A/B: the work tree's services against another checkout's, calls alternated.

``--compare-code`` runs each scenario of one side after the other's, so a change worth 5-10 %
of CPU per call reads anywhere from -20 % to +20 % on this machine. Here both systems run at
once and their calls take turns in alternated rounds (:mod:`bench.scenarios._rounds`): through
the SDK's session stream and, at the same concurrency, through the gate's HTTP interface.
"""

from __future__ import annotations

from datetime import timedelta

from bench.clients import CALL_TIMEOUT
from bench.cluster import Variant, start_system
from bench.results_model import ScenarioResult
from bench.scenarios._calls import sdk_call
from bench.scenarios._context import Ctx, result_key, title_suffix
from bench.scenarios._http import HTTP_LISTEN, echo_body, http_session, post_call, system_urls
from bench.scenarios._rounds import Side, alternate, round_details, rows
from goverse.client import Client


async def ab(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    if not s.compare_code:
        raise ValueError("scenario 10 compares the work tree with --compare-code DIR")
    base_variant = Variant("code", variant.loop, code=s.compare_code, tls=variant.tls)
    result = ScenarioResult(
        result_key("ab", variant),
        "10. A/B: work tree vs another checkout, alternated rounds" + title_suffix(variant),
        a_label="checkout",
        b_label="work tree",
        params={
            "concurrency": list(s.concurrency),
            "payload_bytes": s.payload,
            "loop": variant.loop,
            "checkout": s.compare_code,
            "rounds": s.ab_rounds,
            "round_warmup_s": s.ab_round_warmup,
            "round_s": s.ab_round_seconds,
            "paths": "sdk: goverse.client.Client.call (session stream); http: POST through "
            "the gate's HTTP interface, one keep-alive connection per worker",
        },
    )
    payload = b"x" * s.payload
    body = echo_body(s.payload)
    async with ctx.scope():
        systems = [
            await start_system(ctx.procs, base_variant, gate_flags=[HTTP_LISTEN]),
            await start_system(ctx.procs, variant, gate_flags=[HTTP_LISTEN]),
        ]
        sides = [Side.of(system) for system in systems]
        ids = [f"echo-{index}" for index in range(max(s.concurrency))]
        for level in s.concurrency:
            async with (
                Client([systems[0].gate_address], call_timeout=_timeout()) as base_client,
                Client([systems[1].gate_address], call_timeout=_timeout()) as new_client,
                http_session(level) as base_http,
                http_session(level) as new_http,
            ):
                for side, system, client, http in (
                    (sides[0], systems[0], base_client, base_http),
                    (sides[1], systems[1], new_client, new_http),
                ):
                    side.rounds = {}
                    side.calls = {
                        "sdk": sdk_call(client, ids, payload),
                        "http": post_call(http, system_urls(system, level), body),
                    }
                    for path in side.calls:  # activation and connecting are not measured
                        for worker in range(level):
                            await side.calls[path](worker)
                for path in ("sdk", "http"):
                    await alternate(ctx, sides, path, level)
                    case = f"{path}, concurrency {level}"
                    rows(result, case, sides[0].rounds[path], sides[1].rounds[path])
                    result.details[case] = round_details(
                        {"checkout": sides[0], "work tree": sides[1]}, path
                    )
    return result


def _timeout() -> timedelta:
    return timedelta(seconds=CALL_TIMEOUT)


__all__ = ["ab"]
