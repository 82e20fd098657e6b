"""The HTTP fallback across nodes on Redis: a POST that reaches another node than the one
holding the event stream is forwarded to it through the broker (no sticky sessions)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from wshub.factory import create_hub
from wshub.testing import TestServer, run_server

from ..conftest import make_settings
from ..redis_server import redis_server, redis_url  # noqa: F401  (fixtures)
from ..sse_client import open_stream


@contextlib.asynccontextmanager
async def _two_nodes(url: str) -> AsyncIterator[tuple[TestServer, TestServer]]:
    settings = make_settings(store_url=url, broker_url=url, node_ttl=2)
    async with (
        run_server(hub=create_hub(settings)) as a,
        run_server(hub=create_hub(settings)) as b,
    ):
        yield a, b


def _sse(server: TestServer) -> str:
    return f"{server.http}{server.settings.path}/sse"


async def test_a_post_to_the_other_node_is_forwarded_to_the_stream(redis_url: str) -> None:  # noqa: F811
    timeout = httpx.Timeout(5.0, read=None)
    async with _two_nodes(redis_url) as (a, b), httpx.AsyncClient(timeout=timeout) as http:
        assert a.hub.node_id != b.hub.node_id
        async with open_stream(http, _sse(a), token=a.token("alice")) as alice:
            assert alice.connection_id.startswith(a.hub.node_id + "-")
            await alice.expect("authenticated")
            # Subscribe and publish through node B: the replies come on A's stream.
            subscribed = await alice.request(
                "subscribe", {"channel": "news"}, msg_id="s", url=_sse(b)
            )
            assert subscribed["type"] == "subscribed"
            published = await alice.request(
                "publish", {"channel": "news", "data": "via b"}, msg_id="p", url=_sse(b)
            )
            assert published["type"] == "published"
            # B's statuses are the owner's: a wrong key 403, an unknown connection 404.
            wrong = await alice.post({"type": "ping"}, key="wrong", url=_sse(b))
            assert wrong.status_code == 403
            unknown = await http.post(
                f"{_sse(b)}/{a.hub.node_id}-999999",
                content=b'{"type":"ping"}',
                headers={"x-wshub-session": alice.session_key},
            )
            assert unknown.status_code == 404
            # And the hub on B publishes to A's subscriber through the broker as usual.
            await b.hub.publish("news", "from b")
            assert (await alice.until("message")).data["payload"]["data"] == "from b"
