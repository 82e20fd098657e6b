"""The HTTP API (docs/http-api.md): any backend can publish and send through it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, StrictBool, StrictStr, field_validator

from ..core.hub import Hub
from ..protocol import MAX_OFFSET, RESERVED_TYPES, ChannelName, NotificationPayload, now_ms
from ..types import JSON
from .limits import API_DISABLED, MISSING_KEY, bearer_matches

__all__ = ["build_api_router"]


class PublishBody(BaseModel):
    channel: ChannelName
    data: JSON = None


class PublishResult(BaseModel):
    channel: str
    offset: int


class SendBody(BaseModel):
    type: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    payload: dict[str, Any] | None = Field(default_factory=dict, description="null means {}")

    @field_validator("type")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_TYPES:
            raise ValueError(f"{value!r} is a type the server itself sends")
        return value

    @field_validator("payload", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return {} if value is None else value


class DeliveryResult(BaseModel):
    delivered: bool
    queued: bool
    offset: int


class BroadcastBody(BaseModel):
    message: Annotated[StrictStr, Field(min_length=1)]


class BroadcastResult(BaseModel):
    connections: int


class DisconnectBody(BaseModel):
    reason: Annotated[StrictStr, Field(max_length=120)] = "disconnected"
    revoke: StrictBool = False


class DisconnectResult(BaseModel):
    connections: int


class UserStatus(BaseModel):
    userId: str
    online: bool
    connections: int


class PresenceResult(BaseModel):
    channel: str
    users: list[str]


class ChannelStat(BaseModel):
    channel: str
    subscribers: int


class StatsResult(BaseModel):
    """This node's state and counters since start, for dashboards."""

    nodeId: str
    nodes: list[str]
    time: int
    connections: int
    users: int
    channels: list[ChannelStat]
    queuedBytes: int
    counters: dict[str, int]
    messagesIn: dict[str, int]
    messagesOut: dict[str, int]


class HistoryResult(BaseModel):
    channel: str
    offset: int
    epoch: str
    publications: list[dict[str, Any]]


UserIdPath = Annotated[str, Path(min_length=1, max_length=256)]
ChannelPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-:.@/]{1,128}$")]


def build_api_router(hub: Hub) -> APIRouter:
    """Routes under ``/api``, each requiring ``Authorization: Bearer <WS_API_KEY>``."""
    api_key = hub.settings.api_key.get_secret_value().encode() if hub.settings.api_key else None

    def require_key(request: Request) -> None:
        # ApiLimits (limits.py) has checked the key before the body was read; this holds the
        # routes to it even where the router is used without that middleware.
        if api_key is None:
            raise HTTPException(401, API_DISABLED)
        if not bearer_matches(request.headers.get("authorization"), api_key):
            raise HTTPException(401, MISSING_KEY, {"WWW-Authenticate": "Bearer"})

    router = APIRouter(
        prefix="/api",
        dependencies=[Depends(require_key)],
        tags=["api"],
        responses={
            401: {"description": "Missing or invalid API key (checked before the body is read)"},
            # e.g. a channel path segment with characters no route matches (a newline)
            404: {"description": "No such route"},
            408: {"description": "The body did not arrive within WS_REQUEST_TIMEOUT seconds"},
            413: {
                "description": "The body is over WS_API_MAX_BODY bytes, or the message over "
                "what a connection can carry (WS_OUTBOX_MAX_BYTES)"
            },
            503: {"description": "A backend this call needs is unavailable"},
        },
    )

    @router.post("/publish", summary="Publish to a channel")
    async def publish(body: PublishBody) -> PublishResult:
        offset = await hub.publish(body.channel, body.data)
        return PublishResult(channel=body.channel, offset=offset)

    @router.post("/users/{user_id}/send", summary="Send a message to every connection of a user")
    async def send(user_id: UserIdPath, body: SendBody) -> DeliveryResult:
        d = await hub.send_to_user(user_id, body.type, body.payload or {})
        return DeliveryResult(delivered=d.delivered, queued=d.queued, offset=d.offset)

    @router.post("/users/{user_id}/notify", summary="Send a notification to a user")
    async def notify(user_id: UserIdPath, body: NotificationPayload) -> DeliveryResult:
        fields = body.model_dump()
        extra = {k: v for k, v in fields.items() if k not in {"title", "message", "type"}}
        d = await hub.notify_user(user_id, body.title, body.message, body.type, **extra)
        return DeliveryResult(delivered=d.delivered, queued=d.queued, offset=d.offset)

    @router.post(
        "/users/{user_id}/disconnect",
        summary="Close every connection of a user (4002), on every node; revoke their tokens",
    )
    async def disconnect(user_id: UserIdPath, body: DisconnectBody) -> DisconnectResult:
        n = await hub.disconnect_user(user_id, body.reason, revoke=body.revoke)
        return DisconnectResult(connections=n)

    @router.post("/broadcast", summary="A system_message to every connection")
    async def broadcast(body: BroadcastBody) -> BroadcastResult:
        return BroadcastResult(connections=await hub.broadcast(body.message))

    @router.get("/users/{user_id}", summary="Whether a user is online")
    async def user_status(user_id: UserIdPath) -> UserStatus:
        connections = await hub.user_connections(user_id)
        return UserStatus(userId=user_id, online=connections > 0, connections=connections)

    @router.get("/channels/{channel:path}/presence", summary="Users in a presence channel")
    async def presence(channel: ChannelPath) -> PresenceResult:
        return PresenceResult(channel=channel, users=list(await hub.presence(channel)))

    @router.get("/channels/{channel:path}/history", summary="Stored publications of a channel")
    async def history(
        channel: ChannelPath,
        since: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> HistoryResult:
        items, pos = await hub.history(channel, since, limit)
        return HistoryResult(
            channel=channel, offset=pos.offset, epoch=pos.epoch, publications=items
        )

    @router.get("/stats", summary="Connections, users, channels and counters of this node")
    async def stats() -> StatsResult:
        st = hub.stats
        channels = sorted(
            (
                ChannelStat(channel=c, subscribers=hub.subscriber_count(c))
                for c in hub.channel_names()
            ),
            key=lambda c: -c.subscribers,
        )
        counters = {
            name: getattr(st, name)
            for name in (
                "connections_opened",
                "connections_closed",
                "messages_in",
                "deliveries",
                "publications",
                "user_messages",
                "errors_sent",
                "rate_limited",
                "overflows",
                "dropped",
                "backend_errors",
            )
        }
        return StatsResult(
            nodeId=hub.node_id,
            nodes=await hub.nodes(),
            time=now_ms(),
            connections=len(hub.sessions),
            users=len(hub.user_ids()),
            channels=channels[:200],
            queuedBytes=hub.queued_bytes(),
            counters=counters,
            messagesIn=dict(st.in_by_type),
            messagesOut=dict(st.out_by_type),
        )

    return router
