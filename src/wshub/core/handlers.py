"""The built-in message types of protocol v1, registered like any application handler."""

from __future__ import annotations

from ..errors import AuthFailed, NotFound
from ..protocol import (
    AuthenticatePayload,
    ChannelPayload,
    ChatPayload,
    EmptyPayload,
    PublishPayload,
    SubscribePayload,
    now_ms,
)
from .permissions import ChannelKind, channel_kind
from .router import Router
from .session import Context

__all__ = ["register_builtin_handlers"]


async def ping(ctx: Context, payload: EmptyPayload) -> None:
    """Application-level keepalive for clients that cannot send protocol pings; answered by
    ``pong``."""
    ctx.reply("pong", {"timestamp": now_ms()})


async def authenticate(ctx: Context, payload: AuthenticatePayload) -> None:
    """Authenticate the connection with a token; undelivered user messages follow."""
    try:
        principal = await ctx.hub.verify_token(payload.token)
    except AuthFailed as exc:
        ctx.session.send_error(exc.code, exc.message, id=ctx.id)
        ctx.session.auth_failed()
        return
    await ctx.hub.authenticate_session(
        ctx.session, principal, since=payload.since, epoch=payload.epoch, msg_id=ctx.id
    )


async def chat(ctx: Context, payload: ChatPayload) -> None:
    """A direct message to a user, delivered to all of the user's connections or stored."""
    ctx.hub.chat_for(ctx.session, payload.recipientId, payload.message, msg_id=ctx.id)


async def subscribe(ctx: Context, payload: SubscribePayload) -> None:
    """Subscribe to a channel; with ``since``, missed publications are replayed first."""
    await ctx.hub.subscribe(
        ctx.session, payload.channel, since=payload.since, epoch=payload.epoch, msg_id=ctx.id
    )


async def unsubscribe(ctx: Context, payload: ChannelPayload) -> None:
    """Stop receiving a channel's publications."""
    ctx.hub.unsubscribe(ctx.session, payload.channel)
    ctx.reply("unsubscribed", {"channel": payload.channel})


async def publish(ctx: Context, payload: PublishPayload) -> None:
    """Publish data on a channel (by default: an authenticated subscriber)."""
    await ctx.hub.check_publish(ctx.session, payload.channel)
    ctx.hub.publish_for(ctx.session, payload.channel, payload.data, msg_id=ctx.id)


async def presence(ctx: Context, payload: ChannelPayload) -> None:
    """Who is online in a presence channel."""
    if channel_kind(payload.channel) is not ChannelKind.PRESENCE:
        raise NotFound(f"{payload.channel!r} is not a presence channel")
    users = await ctx.hub.presence(payload.channel)
    ctx.reply("presence", {"channel": payload.channel, "users": users})


def register_builtin_handlers(router: Router) -> None:
    router.add("ping", ping)
    router.add("authenticate", authenticate)
    router.add("chat", chat, requires_auth=True, pipelined=True)
    router.add("subscribe", subscribe)
    router.add("unsubscribe", unsubscribe)
    router.add("publish", publish, pipelined=True)
    router.add("presence", presence, requires_auth=True)
