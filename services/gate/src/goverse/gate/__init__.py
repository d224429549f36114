"""The goverse gate: holds client connections, verifies their calls and routes them to nodes."""

from __future__ import annotations

import goverse.grpc_environment  # noqa: F401  # first: grpc reads it when it loads
from goverse.gate._app import GateApp
from goverse.gate._auth import Authenticator, Credentials
from goverse.gate._catalog import Catalog
from goverse.gate._client_proxy import ClientProxy
from goverse.gate._clients import ClientRegistry
from goverse.gate._config import GateConfig, parse_config
from goverse.gate._node_link import LinkState, NodeLink
from goverse.gate._router import Router
from goverse.gate._servicer import GateService

__all__ = [
    "Authenticator",
    "Catalog",
    "ClientProxy",
    "ClientRegistry",
    "Credentials",
    "GateApp",
    "GateConfig",
    "GateService",
    "LinkState",
    "NodeLink",
    "Router",
    "parse_config",
]
