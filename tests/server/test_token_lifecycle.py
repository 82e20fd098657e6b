"""A connection follows its credentials (protocol 1.1): ``token_expiring`` ahead of ``exp``, a
refresh in place, 4001 at ``exp``, 4002 and revocation, tokens without ``exp`` refused, and a
connection that closes mid-authentication leaves nothing behind. Real servers, real clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import websockets

from wshub.auth.jwt import issue_token
from wshub.factory import create_hub
from wshub.presence.memory import MemoryPresence
from wshub.testing import TestServer, run_server

from ..conftest import SECRET, ServerFactory, make_settings


def _token(user: str, ttl: float | None, **claims: object) -> str:
    return issue_token(user, SECRET, ttl=ttl, **claims)


def _exp(token: str) -> int:
    import jwt

    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


async def test_token_expiring_comes_ahead_of_exp_and_the_connection_closes_with_4001_at_it(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(token_refresh_window=1) as server:
        token = _token("alice", 2)
        async with server.connect(token=token) as alice:
            await alice.expect("welcome")
            await alice.expect("authenticated")
            warning = await alice.expect("token_expiring", timeout=3)
            assert warning["payload"]["expiresAt"] == _exp(token) * 1000
            code, reason = await alice.closed(timeout=3)
            closed_at = time.time()
        assert (code, reason) == (4001, "token expired")
        assert _exp(token) - 0.05 <= closed_at <= _exp(token) + 1.5


async def test_a_refresh_in_place_keeps_subscriptions_and_moves_the_deadline(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(token_refresh_window=1) as server:
        old = _token("alice", 2)
        async with server.connect(token=old) as alice:
            await alice.expect("welcome")
            await alice.expect("authenticated")
            await alice.request("subscribe", {"channel": "news"})
            await alice.expect("token_expiring", timeout=3)
            reply = await alice.request("authenticate", {"token": _token("alice", 60)})
            assert reply["type"] == "authenticated"
            assert reply["payload"]["refreshed"] is True
            assert reply["payload"]["userId"] == "alice"
            # past the old exp the connection is still open and still subscribed
            await asyncio.sleep(
                max(0.0, _exp(old) + 0.5 - time.time())
            )  # no event for "not closed"
            await server.hub.publish("news", "still here")
            message = await alice.expect("message")
            assert message["payload"]["data"] == "still here"


async def test_another_users_token_on_an_authenticated_connection_is_forbidden(
    server: TestServer,
) -> None:
    async with server.connect(user="alice") as alice:
        await alice.expect("welcome")
        await alice.expect("authenticated")
        reply = await alice.request("authenticate", {"token": server.token("mallory")})
        assert reply["type"] == "error"
        assert reply["payload"]["code"] == "forbidden"
        assert server.hub.connection_count("alice") == 1
        assert server.hub.connection_count("mallory") == 0


async def test_a_token_without_exp_is_refused_unless_allowed(server_factory: ServerFactory) -> None:
    no_exp = _token("alice", None)
    async with server_factory() as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with server.connect(token=no_exp):
                pass
        assert refused.value.response.status_code == 401
        async with server.connect() as client:
            await client.expect("welcome")
            reply = await client.request("authenticate", {"token": no_exp})
            assert reply["payload"]["code"] == "auth_failed"
            assert "exp" in reply["payload"]["message"]
    async with server_factory(jwt_require_exp=False, token_refresh_window=1) as server:
        async with server.connect(token=no_exp) as client:
            await client.expect("welcome")
            await client.expect("authenticated")
            assert len(server.hub.deadlines) == 0  # never expires: nothing armed


async def test_a_refresh_ends_private_subscriptions_the_new_token_does_not_allow(
    server_factory: ServerFactory,
) -> None:
    async with server_factory() as server:
        both = _token("alice", 60, channels=["private-a", "private-b"])
        async with server.connect(token=both) as alice:
            await alice.expect("welcome")
            await alice.expect("authenticated")
            assert (await alice.request("subscribe", {"channel": "private-a"}))["type"] == (
                "subscribed"
            )
            assert (await alice.request("subscribe", {"channel": "private-b"}))["type"] == (
                "subscribed"
            )
            only_a = _token("alice", 60, channels=["private-a"])
            await alice.send("authenticate", {"token": only_a}, id="refresh")
            ended = await alice.expect("unsubscribed")
            assert ended["payload"] == {
                "channel": "private-b",
                "server": True,
                "reason": "forbidden",
            }
            reply = await alice.expect("authenticated")
            assert reply["payload"]["refreshed"] is True
            assert server.hub.subscriber_count("private-b") == 0
            assert server.hub.subscriber_count("private-a") == 1


async def test_disconnect_with_revoke_closes_with_4002_and_refuses_older_tokens(
    server_factory: ServerFactory,
) -> None:
    async with server_factory() as server:
        before = _token("alice", 60)
        async with server.connect(token=before) as alice, server.connect(user="bob") as bob:
            await alice.expect("welcome")
            await bob.expect("welcome")
            assert await server.hub.disconnect_user("alice", "access removed", revoke=True) == 1
            assert await alice.closed() == (4002, "access removed")
            await bob.request("ping")  # others are not touched
        revoked = int(time.time())
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with server.connect(token=before):
                pass
        assert refused.value.response.status_code == 401
        later = _token("alice", 60, iat=revoked + 1)
        async with server.connect(token=later) as alice:
            await alice.expect("welcome")
            assert (await alice.expect("authenticated"))["payload"]["userId"] == "alice"


async def test_a_revocation_survives_a_restart(tmp_path: Path) -> None:
    settings = make_settings(store_url=f"sqlite:///{tmp_path}/hub.db")
    token = _token("alice", 60)
    async with run_server(settings) as server:
        await server.hub.disconnect_user("alice", revoke=True)
    async with run_server(settings) as server, server.connect() as client:
        await client.expect("welcome")
        reply = await client.request("authenticate", {"token": token})
        assert reply["payload"] == {"code": "auth_failed", "message": "Token revoked"}


class _GatedPresence(MemoryPresence):
    """Real in-memory presence whose ``connect`` waits until the test opens the gate: the
    window in which a client can close while ``authenticate`` is awaiting."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def connect(self, user_id: str, conn_id: str) -> None:
        self.waiting.set()
        await self.gate.wait()
        await super().connect(user_id, conn_id)


async def test_a_connection_closing_while_it_authenticates_leaves_no_ghost(
    transport: str,
) -> None:
    presence = _GatedPresence()
    hub = create_hub(
        make_settings(transport=transport, max_connections_per_user=1), presence=presence
    )
    async with run_server(hub=hub) as server:
        async with server.connect() as ghost:
            await ghost.expect("welcome")
            await ghost.send("authenticate", {"token": server.token("carol")})
            await asyncio.wait_for(presence.waiting.wait(), 5)
        # closed by now on the client's side; the native transport has already told the hub
        # (plain ASGI only notices once the handler returns)
        presence.gate.set()
        await asyncio.wait_for(hub.wait_idle(), 5)
        await hub._settle_tasks()
        assert not await hub.is_user_connected("carol")
        assert await presence.connections("carol") == 0
        delivery = await hub.send_to_user("carol", "note", {"n": 1})
        assert (delivery.delivered, delivery.queued) == (False, True)
        async with server.connect(user="carol") as carol:  # not locked out by the cap
            await carol.expect("welcome")
            await carol.expect("authenticated")
            note = await carol.expect("note")
            assert note["offset"] == delivery.offset


async def test_the_http_api_disconnects_a_user(server: TestServer) -> None:
    import httpx

    from ..conftest import API_KEY

    async with server.connect(user="alice") as alice, server.connect(user="alice") as again:
        await alice.expect("welcome")
        await again.expect("welcome")
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
            r = await http.post("/api/users/alice/disconnect", json={"reason": "bye"})
            assert r.status_code == 200 and r.json() == {"connections": 2}
        assert await alice.closed() == (4002, "bye")
        assert await again.closed() == (4002, "bye")
    async with server.connect(user="alice") as alice:  # no revoke: tokens still work
        await alice.expect("welcome")
        await alice.expect("authenticated")
