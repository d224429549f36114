"""Message limits that compose: what a client may send within ``--max-message-bytes`` always
fits every hop behind the gate.

A client's message is at most ``--max-message-bytes`` (the gate's server enforces it, the SDK
checks it first). Forwarding wraps it: the gate's ``CallFrame`` adds the caller, a call id, a
deadline and the trace context, and frames are batched on the Calls stream. With the same limit
on every hop, a request of exactly ``--max-message-bytes`` passed the gate and failed on the
gate → node hop ("Sent message larger than max"). Channels between services and the node's
server therefore take :data:`HOP_HEADROOM_BYTES` more; what reaches a client is still bounded
by ``--max-message-bytes`` (the gate refuses a larger answer with RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

HOP_HEADROOM_BYTES = 64 * 1024
"""What a hop may add to a client's message: the forwarding envelope is a few hundred bytes
(ids of at most 256 bytes, a W3C trace context, varints), far below this."""


def hop_message_bytes(max_message_bytes: int) -> int:
    """The largest message between services (gate → node, node → node, and back) when clients
    may send `max_message_bytes`."""
    return max_message_bytes + HOP_HEADROOM_BYTES
