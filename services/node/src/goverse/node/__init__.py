"""goverse node: hosts objects, serves calls routed to it and pushes their messages to gates."""

from __future__ import annotations

import goverse.grpc_environment  # noqa: F401  # first: grpc reads it when it loads
from goverse.node._app import NodeApp
from goverse.node._config import NodeConfig, build_parser, parse_config
from goverse.node._gate_streams import GateStreams
from goverse.node._object_host import ObjectHost
from goverse.node._object_types import (
    MethodInfo,
    ObjectLoadError,
    ObjectType,
    load_object_types,
    method_table,
)
from goverse.node._runtime import NodeRuntime
from goverse.node._servicer import NodeService

__all__ = [
    "GateStreams",
    "MethodInfo",
    "NodeApp",
    "NodeConfig",
    "NodeRuntime",
    "NodeService",
    "ObjectHost",
    "ObjectLoadError",
    "ObjectType",
    "build_parser",
    "load_object_types",
    "method_table",
    "parse_config",
]
