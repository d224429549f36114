"""DropReason: why a push was not queued or was discarded, one vocabulary for gate and node."""

from __future__ import annotations

import enum


class DropReason(enum.StrEnum):
    """Why a push was dropped: the ``reason`` of the dropped-pushes counters and log lines.

    The node counts its drops in ``Status.dropped_pushes`` and
    ``goverse_node_pushes_dropped_total``, the gate in ``goverse_gate_pushes_dropped_total``
    (``docs/observability.md``, ``docs/resilience.md``).
    """

    QUEUE_FULL = "queue_full"
    """Node: the queue of the client's gate is full. Gate: the client's queue overflowed under
    the ``drop-oldest`` policy, and this push was dropped to make room."""
    MESSAGE_TOO_LARGE = "message_too_large"
    """Node and gate: the push alone would not fit one stream message (--max-message-bytes)."""

    GATE_NOT_REGISTERED = "gate_not_registered"
    """Node: no stream from the client's gate (it is down, or restarting)."""
    MALFORMED_CLIENT_ID = "malformed_client_id"
    """Node: the client id is not ``<gate-id>/<random>``."""
    INVALID_MESSAGE = "invalid_message"
    """Node: what an object pushed is not a protobuf message."""

    UNKNOWN_CLIENT = "unknown_client"
    """Gate: the client is not registered on this gate."""
    CLIENT_CLOSED = "client_closed"
    """Gate: the client's registration is ending or ended (disconnected, draining): a push
    for it then, or one still queued for it when its stream ended (discarded with its
    queue)."""
    SLOW_CONSUMER = "slow_consumer"
    """Gate: the client's queue overflowed under the ``disconnect`` policy; counts the push that
    overflowed and every push its queue held, all discarded with the client."""


__all__ = ["DropReason"]
