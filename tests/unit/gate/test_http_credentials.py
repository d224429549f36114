"""What an HTTP call presents to the gate's authenticator: its headers as metadata."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from goverse.gate._http import _credentials


def test_the_headers_are_the_metadata_with_lower_case_names_as_grpc_has_them() -> None:
    headers = CIMultiDict(
        [("X-Api-Key", "first"), ("Authorization", "Bearer t"), ("x-api-key", "second")]
    )
    credentials = _credentials(make_mocked_request("POST", "/v1/objects/A/b/C", headers), "t")

    assert credentials.token == "t"
    # A repeated header: its last value, as a dict made of the items keeps.
    assert dict(credentials.metadata) == {"x-api-key": "second", "authorization": "Bearer t"}
    assert credentials.metadata == {"x-api-key": "second", "authorization": "Bearer t"}
    assert credentials.metadata["authorization"] == "Bearer t"
    assert credentials.metadata.get("X-Api-Key") is None  # names are lower case only
    assert len(credentials.metadata) == 2
    assert sorted(credentials.metadata) == ["authorization", "x-api-key"]
