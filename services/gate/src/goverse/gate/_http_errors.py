"""HTTP errors: the one place a gRPC status becomes an HTTP status and a JSON error body.

Statuses follow Google's mapping of gRPC codes to HTTP (``google.rpc.Code``), as
``docs/http.md`` tabulates; the body is ``{"code": "<gRPC code name>", "message": "..."}``.
"""

from __future__ import annotations

import asyncio
import json

import grpc
from aiohttp import web

from goverse.errors import GoverseError, bounded

JSON = "application/json"

_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC code -> HTTP status; every other code (UNKNOWN, INTERNAL, DATA_LOSS) is 500."""

_HTTP_CODES = {
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""The gRPC code named in the body of aiohttp's own refusals (unknown path, wrong method,
body over the bound); any other is INVALID_ARGUMENT for a 4xx, INTERNAL for a 5xx."""


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of the gRPC code `code`."""
    return _STATUS.get(code, 500)


def error_response(
    code: grpc.StatusCode, message: str, *, status: int | None = None
) -> web.Response:
    """The JSON error answer of `code` with `message` (bounded), at `status` if given, else
    at :func:`http_status`."""
    body = json.dumps({"code": code.name, "message": bounded(message)})
    return web.Response(
        status=http_status(code) if status is None else status,
        text=body,
        content_type=JSON,
    )


def error_of(error: GoverseError) -> web.Response:
    """The JSON error answer of a goverse error."""
    return error_response(error.status_code, error.message)


def code_of(error: BaseException) -> grpc.StatusCode:
    """The gRPC code a request that raised `error` is answered (and measured) with: a goverse
    error's own, aiohttp's refusals as :func:`from_http_exception` names them, a body that
    does not decompress INVALID_ARGUMENT, a cancelled request CANCELLED, anything else
    INTERNAL (as the gate's error middleware answers them)."""
    if isinstance(error, GoverseError):
        return error.status_code
    if isinstance(error, web.HTTPException):
        return _code_of_status(error.status)
    if isinstance(error, web.RequestPayloadError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def _code_of_status(status: int) -> grpc.StatusCode:
    return _HTTP_CODES.get(
        status,
        grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL,
    )


def from_http_exception(exception: web.HTTPException) -> web.Response:
    """aiohttp's own refusal (404, 405, 413 …) as a JSON error answer at the same status."""
    status = exception.status
    code = _code_of_status(status)
    message = exception.reason
    if status == 413:  # aiohttp's text names the bound and the size
        message = f"{exception.text} (--http-max-body-bytes)"
    response = error_response(code, message, status=status)
    if status == 405:  # tells the client which methods the path has
        allow = exception.headers.get("Allow")
        if allow is not None:
            response.headers["Allow"] = allow
    return response


__all__ = ["JSON", "code_of", "error_of", "error_response", "from_http_exception", "http_status"]
