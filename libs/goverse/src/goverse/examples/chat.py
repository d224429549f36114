"""ChatRoom: clients join a room and every message sent is pushed to every member."""

from __future__ import annotations

from goverse.errors import InvalidArgument
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
MAX_TEXT_BYTES = 4096


class ChatRoom(Stateful[ChatRoomState]):
    """A room: its members (client ids) and its most recent messages, kept in the store."""

    durability = Durability.EACH_CALL

    async def Join(self, request: JoinRequest) -> JoinResponse:
        client_id = self.caller.client_id
        if not client_id:
            raise InvalidArgument("only clients can join a room")
        self.state.members[client_id] = request.user
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
        state = self.state
        state.seq += 1
        message = ChatMessage(room=self.id, user=request.user, text=request.text, seq=state.seq)
        state.recent.append(message)
        if len(state.recent) > RECENT_MESSAGES:
            del state.recent[: len(state.recent) - RECENT_MESSAGES]
        self.push(sorted(state.members), message)  # a protobuf map has no order of its own
        return SendResponse(seq=state.seq)
