"""A minimal OTLP/gRPC trace receiver for the tracing-on runs: it accepts every export, counts
requests, bytes and spans, and throws the spans away.

``python -m bench.otlp_sink --listen 127.0.0.1:PORT``; on SIGTERM it prints one JSON line
``{"requests": ..., "bytes": ..., "spans": ...}`` and exits. It needs no OpenTelemetry package:
the request is counted from the protobuf wire format (ExportTraceServiceRequest ->
resource_spans (1) -> scope_spans (2) -> spans (2)) and the answer is the empty
ExportTraceServiceResponse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.serving import serve_until_signalled

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(field number, bytes of a length-delimited field or None) of a protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
            yield number, None
        elif wire_type == 1:
            pos += 8
            yield number, None
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            yield number, data[pos : pos + length]
            pos += length
        elif wire_type == 5:
            pos += 4
            yield number, None
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def count_spans(request: bytes) -> int:
    spans = 0
    for number, resource_spans in fields(request):
        if number != 1 or resource_spans is None:
            continue
        for inner, scope_spans in fields(resource_spans):
            if inner != 2 or scope_spans is None:
                continue
            spans += sum(1 for n, value in fields(scope_spans) if n == 2 and value is not None)
    return spans


class Sink:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        self.bad = 0

    async def export(self, request: bytes, context: Any) -> bytes:
        self.requests += 1
        self.bytes += len(request)
        try:
            self.spans += count_spans(request)
        except (ValueError, IndexError):
            self.bad += 1
        return b""

    def handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self.export)}
        )


async def serve(listen: str, ready_file: Path | None) -> int:
    sink = Sink()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((sink.handler(),))
    if not await serve_until_signalled(server, "otlp-sink", listen, ready_file):
        return 1
    await server.stop(grace=0.5)
    summary = {"requests": sink.requests, "bytes": sink.bytes, "spans": sink.spans}
    print(json.dumps({**summary, "unparsed": sink.bad}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port; port 0 picks a free one")
    parser.add_argument("--ready-file", type=Path, help="where to write the bound address")
    args = parser.parse_args(argv)
    return asyncio.run(serve(args.listen, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
