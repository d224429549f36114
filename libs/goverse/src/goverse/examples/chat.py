"""ChatRoom: clients join a room and every message sent is pushed to every member."""

from __future__ import annotations

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from goverse.errors import InvalidArgument, ResourceExhausted
from goverse.examples.v1.chat_pb2 import (
    ChatMessage,
    ChatRoomState,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    LeaveResponse,
    SendRequest,
    SendResponse,
)
from goverse.objects import Durability, Stateful

RECENT_MESSAGES = 50
"""The most messages a room keeps (and a Join answers)."""
MAX_HISTORY_BYTES = 64 * 1024
"""The most bytes of messages a room keeps: its state and every Join's answer stay far below
the 4 MiB message limit (unbounded, 45 Sends with a 100 KiB user made every Join fail)."""
MAX_TEXT_BYTES = 4096
MAX_USER_BYTES = 64
MAX_MEMBERS = 1000
"""The most members a room has: its state is saved on every call."""


def _check_user(user: str) -> None:
    if len(user.encode()) > MAX_USER_BYTES:
        raise InvalidArgument(f"user is longer than {MAX_USER_BYTES} bytes")


class ChatRoom(Stateful[ChatRoomState]):
    """A room: its members (client ids) and its most recent messages, kept in the store."""

    durability = Durability.EACH_CALL
    # ChatMessage is in chat.proto with the methods' messages, so Describe would hand out its
    # descriptor anyway; declaring it says what clients receive.
    push_types = (ChatMessage,)

    async def Join(self, request: JoinRequest) -> JoinResponse:
        client_id = self.caller.client_id
        if not client_id:
            raise InvalidArgument("only clients can join a room")
        _check_user(request.user)
        members = self.state.members
        if client_id not in members and len(members) >= MAX_MEMBERS:
            raise ResourceExhausted(f"the room has {MAX_MEMBERS} members already")
        members[client_id] = request.user
        return JoinResponse(recent_messages=list(self.state.recent))

    async def Leave(self, request: LeaveRequest) -> LeaveResponse:
        members = self.state.members
        left = self.caller.client_id in members
        if left:
            del members[self.caller.client_id]
        return LeaveResponse(left=left)

    async def Send(self, request: SendRequest) -> SendResponse:
        if len(request.text.encode()) > MAX_TEXT_BYTES:
            raise InvalidArgument(f"text is longer than {MAX_TEXT_BYTES} bytes")
        _check_user(request.user)
        state = self.state
        state.seq += 1
        message = ChatMessage(room=self.id, user=request.user, text=request.text, seq=state.seq)
        state.recent.append(message)
        _trim(state.recent)
        self.push(sorted(state.members), message)  # a protobuf map has no order of its own
        return SendResponse(seq=state.seq)


def _trim(recent: RepeatedCompositeFieldContainer[ChatMessage]) -> None:
    """Drops the oldest messages until at most RECENT_MESSAGES of at most MAX_HISTORY_BYTES
    are left (the newest is always kept: it fits by the bounds on user and text)."""
    if len(recent) > RECENT_MESSAGES:
        del recent[: len(recent) - RECENT_MESSAGES]
    size = sum(message.ByteSize() for message in recent)
    drop = 0
    while size > MAX_HISTORY_BYTES and drop < len(recent) - 1:
        size -= recent[drop].ByteSize()
        drop += 1
    del recent[:drop]
