"""EventReader: the server-sent events of one HTTP response, read one at a time with a bound."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class ServerEvent:
    """One event (`name` and its `data` text), or a comment line (`comment`, name empty)."""

    name: str = ""
    data: str = ""
    comment: str = ""

    def json(self) -> Any:
        return json.loads(self.data)


class EventReader:
    """Parses ``text/event-stream`` from `response`: :meth:`next` returns the next event or
    comment, None once the stream has ended."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float) -> ServerEvent | None:
        async with asyncio.timeout(timeout):
            name, data = "", list[str]()
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    return ServerEvent(comment=line[1:].strip())
                if not line:
                    if name or data:
                        return ServerEvent(name or "message", "\n".join(data))
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)

    async def next_event(self, timeout: float) -> ServerEvent:
        """The next event, skipping comments (heartbeats); fails at the end of the stream."""
        while True:
            found = await self.next(timeout)
            assert found is not None, "the event stream ended"
            if not found.comment:
                return found
