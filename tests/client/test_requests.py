"""RequestTable: ids, replies, hooks and failures; and Distributor: who gets what, once."""

from __future__ import annotations

import pytest

from wshub.client import ConnectionLostError, Envelope, ForbiddenError, Subscription
from wshub.client._dispatch import Dispatcher
from wshub.client.delivery import Distributor
from wshub.client.requests import RequestTable
from wshub.client.streams import StreamState
from wshub.client.subscription import MessageStream


async def test_a_reply_resolves_the_request_with_its_id_after_running_the_hook() -> None:
    table = RequestTable()
    seen: list[str] = []
    a, fa = table.open(lambda env: seen.append(env.type))
    b, fb = table.open()
    assert a != b and a.rsplit("-", 1)[0] == b.rsplit("-", 1)[0]
    assert not table.resolve(Envelope("pong", {}, "someone-elses-id"))
    assert not table.resolve(Envelope("system_message", {}))
    assert table.resolve(Envelope("subscribed", {"channel": "x"}, a))
    assert (await fa).payload == {"channel": "x"} and seen == ["subscribed"]
    assert table.resolve(Envelope("error", {"code": "forbidden", "message": "no"}, b))
    with pytest.raises(ForbiddenError):
        await fb
    assert not table.resolve(Envelope("pong", {}, a))  # answered already


async def test_failing_all_fails_every_pending_request() -> None:
    table = RequestTable()
    futures = [table.open()[1] for _ in range(3)]
    table.fail_all(ConnectionLostError("gone"))
    for f in futures:
        with pytest.raises(ConnectionLostError):
            await f


def subscription(channel: str) -> Subscription:
    async def unsubscribe(sub: Subscription) -> None:
        return None

    return Subscription(channel, state=StreamState(), callback=None, unsubscribe=unsubscribe)


async def test_the_distributor_hands_each_message_once_to_its_stream() -> None:
    d = Distributor(Dispatcher(), user=StreamState(), on_gap=None)
    sub = subscription("news")
    d.sub_joined(sub)(Envelope("subscribed", {"channel": "news", "offset": 0, "epoch": "e"}))
    assert d.subs == {"news": sub}
    stream = MessageStream(d.streams.discard)
    d.streams.add(stream)
    d.user_joined()(Envelope("authenticated", {"userId": "amy", "offset": 0, "epoch": "u"}))
    for offset in (1, 2, 2, 1, 3):
        d.deliver(Envelope("message", {"channel": "news", "data": offset, "offset": offset}))
        d.deliver(Envelope("note", {}, offset=offset))
    d.deliver(Envelope("message", {"channel": "other", "data": 0, "offset": 9}))
    d.end_all(None)
    assert [m.data async for m in sub] == [1, 2, 3]
    assert [e.offset async for e in stream] == [1, 2, 3]
    assert d.user_id == "amy"
