"""The HTTP status of every gRPC code, and the JSON error body, as docs/http.md tabulates."""

from __future__ import annotations

import json

import grpc
import pytest
from aiohttp import web

from goverse.errors import NotFound
from goverse.gate._http_errors import error_of, from_http_exception, http_status

TABLE = {
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
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda code: code.name)
def test_every_grpc_code_has_the_status_of_googles_mapping(code: grpc.StatusCode) -> None:
    """Every gRPC code maps as the table in docs/http.md says."""
    assert http_status(code) == TABLE[code]


def test_a_goverse_error_becomes_a_json_body_with_its_code_name() -> None:
    """The body names the gRPC code and carries the bounded message."""
    response = error_of(NotFound("unknown object type 'x'" + "y" * 5000))
    assert response.status == 404
    assert response.content_type == "application/json"
    assert response.text is not None
    body = json.loads(response.text)
    assert body["code"] == "NOT_FOUND"
    assert len(body["message"]) <= 1024


@pytest.mark.parametrize(
    ("exception", "status", "code"),
    [
        (web.HTTPNotFound(), 404, "NOT_FOUND"),
        (web.HTTPMethodNotAllowed("GET", ["POST"]), 405, "UNIMPLEMENTED"),
        (web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20), 413, "RESOURCE_EXHAUSTED"),
        (web.HTTPBadRequest(), 400, "INVALID_ARGUMENT"),
    ],
)
def test_aiohttps_own_refusals_keep_their_status_with_a_json_body(
    exception: web.HTTPException, status: int, code: str
) -> None:
    """Unknown path 404, wrong method 405 (with Allow), body too large 413."""
    response = from_http_exception(exception)
    assert response.status == status
    assert response.text is not None
    assert json.loads(response.text)["code"] == code
    if status == 405:
        assert response.headers["Allow"] == "POST"
