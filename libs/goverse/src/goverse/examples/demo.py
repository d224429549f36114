"""Demo client: two users chat in a room and count apples, showing calls and pushes live."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Callable, Sequence

from goverse.client import CallError, Client
from goverse.examples.v1.chat_pb2 import (
    ChatMessage,
    JoinRequest,
    JoinResponse,
    SendRequest,
    SendResponse,
)
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest

ROOM = "lobby"


def say(text: str) -> None:
    print(text, flush=True)


async def print_pushes(name: str, client: Client) -> None:
    async for item in client.messages():
        message = ChatMessage()
        if item.Unpack(message):
            say(
                f"  {name:>5} <- push   {message.room} #{message.seq} "
                f"{message.user}: {message.text}"
            )
        else:
            say(f"  {name:>5} <- push   {item.TypeName()}")


async def run(gates: list[str], rounds: int, interval: float) -> None:
    def reconnected(name: str) -> Callable[[str, str], None]:
        return lambda old, new: say(f"  {name:>5} reconnected: {old} -> {new}")

    async with (
        Client(gates, on_reconnect=reconnected("alice")) as alice,
        Client(gates, on_reconnect=reconnected("bob")) as bob,
    ):
        say(f"alice is {alice.client_id}, bob is {bob.client_id}")
        readers = [
            asyncio.create_task(print_pushes("alice", alice)),
            asyncio.create_task(print_pushes("bob", bob)),
        ]
        try:
            for user, client in (("alice", alice), ("bob", bob)):
                joined = await client.call(
                    "ChatRoom", ROOM, "Join", JoinRequest(user=user), JoinResponse
                )
                say(f"  {user:>5} -> ChatRoom/{ROOM}.Join: {len(joined.recent_messages)} recent")
            counting = range(1, rounds + 1) if rounds else itertools.count(1)
            for _ in counting:
                for user, client, fruit in (("alice", alice, "apples"), ("bob", bob, "pears")):
                    try:
                        value = await client.call(
                            "Counter", fruit, "Increment", IncrementRequest(by=1), CounterValue
                        )
                        say(f"  {user:>5} -> Counter/{fruit}.Increment: {value.value}")
                        await client.call(
                            "ChatRoom",
                            ROOM,
                            "Send",
                            SendRequest(user=user, text=f"I have counted {value.value} {fruit}"),
                            SendResponse,
                        )
                    except CallError as error:
                        say(f"  {user:>5} call failed: {error.status_code.name} {error.message}")
                await asyncio.sleep(interval)
            await asyncio.sleep(interval)  # let the last pushes arrive
        finally:
            for reader in readers:
                reader.cancel()
            # asyncio.wait, not `await reader` under suppress(CancelledError): a Ctrl-C that
            # cancels run() while it waits here must not be taken for a reader's and dropped.
            await asyncio.wait(readers, timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gates", default="127.0.0.1:7100", help="comma-separated gate addresses")
    parser.add_argument("--rounds", type=int, default=0, help="rounds to run; 0 runs until Ctrl-C")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    args = parser.parse_args(argv)
    gates = [g.strip() for g in args.gates.split(",") if g.strip()]
    try:
        asyncio.run(run(gates, args.rounds, args.interval))
    except KeyboardInterrupt:
        return 0
    except CallError as error:
        print(f"demo failed: {error.status_code.name} {error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
