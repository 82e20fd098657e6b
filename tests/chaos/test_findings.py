"""What the fault checker found, as deterministic reproductions that failed before the fixes (a
failed authenticate unbinds the connection; the SDK retries a transient re-subscribe error).

Found by ``.venv/bin/python -m tools.chaos --scenario redis-burst --seed 21`` (and now and then
by the long ``redis`` scenario): right after a Redis kill, a connection whose ``authenticate``
(with ``since``) failed with ``internal_error`` kept receiving the user's live messages; its retry
with ``since`` on the same connection then got messages twice, out of order, or after a hole.
With ``--auth-retry reconnect`` (a new connection after the error, as the SDK does) the same run
passes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from wshub.client import Client, ConnectionState, ReconnectPolicy, StateChange
from wshub.errors import BackendUnavailable
from wshub.testing import run_server

from ..conftest import make_settings


async def test_a_failed_authenticate_binds_nothing() -> None:
    async with run_server(make_settings()) as server:
        hub = server.hub
        await hub.send_to_user("bob", "note", {"n": 1})
        real_read = hub.store.read
        failures = [BackendUnavailable("simulated outage of the store")]

        async def flaky_read(topic: str, since: int, limit: int | None = None) -> Any:
            if topic.startswith("u:") and failures:
                raise failures.pop()
            return await real_read(topic, since, limit)

        hub.store.read = flaky_read  # type: ignore[method-assign]
        async with server.connect() as ws:
            await ws.expect("welcome")
            token = server.token("bob")
            reply = await ws.request("authenticate", {"token": token, "since": 1})
            assert reply["type"] == "error"
            assert reply["payload"]["code"] == "internal_error"
            # The client was told it is not authenticated: it is not bob's live connection, so
            # a message to bob is queued for bob's next connection, not "delivered" here.
            delivery = await hub.send_to_user("bob", "note", {"n": 2})
            assert delivery.delivered is False and delivery.queued is True
        async with server.connect() as ws:
            await ws.expect("welcome")
            reply = await ws.request("authenticate", {"token": server.token("bob")})
            assert reply["type"] == "authenticated"
            note = await ws.expect("note")  # offset 1 was never handed out, nor was offset 2
            assert note["offset"] == 1


async def test_a_transient_error_while_resubscribing_keeps_the_subscription() -> None:
    """Found by ``.venv/bin/python -m tools.chaos --short --seed 5``: an SDK subscriber whose
    node was killed reconnected while Redis was down; ``re-subscribing to 'chaos-2' failed:
    internal_error`` and it got nothing more of that channel (195 messages behind)."""
    async with run_server(make_settings()) as server:
        hub = server.hub
        connected = asyncio.Event()

        def on_state(change: StateChange) -> None:
            if change.state is ConnectionState.CONNECTED:
                connected.set()

        client = Client(
            server.url,
            token=server.token("amy"),
            reconnect=ReconnectPolicy(min_delay=0, max_delay=0.05),
            on_state=on_state,
        )
        await client.connect()
        try:
            sub = await client.subscribe("news")
            await hub.publish("news", 1)
            assert (await sub.get(5)).data == 1
            real_subscribe = hub.subscribe
            failures = [BackendUnavailable("simulated outage of the store")]

            async def flaky_subscribe(*args: Any, **kwargs: Any) -> Any:
                if failures:
                    raise failures.pop()
                return await real_subscribe(*args, **kwargs)

            hub.subscribe = flaky_subscribe  # type: ignore[method-assign]
            connected.clear()
            for session in hub.sessions_of("amy"):
                session.close(1012, "test drop")
            await asyncio.wait_for(connected.wait(), 5)
            await hub.publish("news", 2)
            assert (await sub.get(5)).data == 2
        finally:
            await client.close()
