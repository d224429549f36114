"""ChatRoom: clients join a room and every message sent is pushed to every member."""

from __future__ import annotations

import collections

from goverse.errors import InvalidArgument
from goverse.examples.v1.chat_pb2 import (
    ChatMessage,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    LeaveResponse,
    SendRequest,
    SendResponse,
)
from goverse.objects import Object

RECENT_MESSAGES = 50
MAX_TEXT_BYTES = 4096


class ChatRoom(Object):
    """A room: its members (client ids) and its most recent messages."""

    def __init__(self) -> None:
        self.members: dict[str, str] = {}
        self.recent: collections.deque[ChatMessage] = collections.deque(maxlen=RECENT_MESSAGES)
        self.seq = 0

    async def Join(self, request: JoinRequest) -> JoinResponse:
        client_id = self.caller.client_id
        if not client_id:
            raise InvalidArgument("only clients can join a room")
        self.members[client_id] = request.user
        return JoinResponse(recent_messages=list(self.recent))

    async def Leave(self, request: LeaveRequest) -> LeaveResponse:
        return LeaveResponse(left=self.members.pop(self.caller.client_id, None) is not None)

    async def Send(self, request: SendRequest) -> SendResponse:
        if len(request.text.encode()) > MAX_TEXT_BYTES:
            raise InvalidArgument(f"text is longer than {MAX_TEXT_BYTES} bytes")
        self.seq += 1
        message = ChatMessage(room=self.id, user=request.user, text=request.text, seq=self.seq)
        self.recent.append(message)
        self.push(self.members, message)
        return SendResponse(seq=self.seq)
