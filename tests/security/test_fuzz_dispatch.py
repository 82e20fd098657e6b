"""Property: whatever a client sends, the hub answers it as the protocol says, and the connection
and the hub stay healthy. Hypothesis builds arbitrary envelopes and payloads (any JSON value,
wrong types, integers past 64 bits, deep nesting within the size limit, unicode, raw JSON
oddities, binary frames, every registered type and random ones) and sends them over a real
connection to a real server, on both transports.

For every message: exactly one direct answer (a ``ping`` with a known id after each message
marks where its answers end); an ``error`` with the code the envelope deserves, or the type's
normal reply (or an error with a known code other than ``internal_error``); the client's ``id``
echoed; no traceback text; no close. After the connection: the hub has no session and no task
left from it.

``WSHUB_FUZZ_EXAMPLES`` sets the number of examples per transport (default 100: about a second);
e.g. ``WSHUB_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/security/test_fuzz_dispatch.py``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection

from wshub.factory import create_hub
from wshub.protocol import MAX_ID_LENGTH, ErrorCode
from wshub.testing import TestServer, run_server

from ..conftest import make_settings

EXAMPLES = int(os.environ.get("WSHUB_FUZZ_EXAMPLES", "100"))
USER = "fuzzer"
BARRIER = "\x00barrier"  # an id the strategies never produce
REGISTERED = sorted(route.type for route in create_hub(make_settings()).router)
#: The normal reply of each built-in type; a type missing here may answer with anything.
REPLY = {
    "ping": "pong",
    "authenticate": "authenticated",
    "chat": "chat_received",
    "subscribe": "subscribed",
    "unsubscribe": "unsubscribed",
    "publish": "published",
    "presence": "presence",
}
#: Pushed to the connection, not answers to one message: any number may come at any time.
PUSHED = {"message", "chat", "notification", "system_message", "presence_join", "presence_leave"}
KNOWN_CODES = {code.value for code in ErrorCode}
TRACEBACK_MARKS = ("Traceback (most recent call last)", 'File "', "Error:", "Exception", ".py")

# -- building messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text put into a message as is (what orjson.dumps cannot or would not write)."""

    text: str


@dataclass(frozen=True)
class Token:
    """A token, made when the message is sent: ``valid`` for USER, or ``expired``."""

    kind: str


def dump(value: Any, server: TestServer) -> str:
    """JSON text for a generated value; Python ints of any size are written out as they are."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Token):
        ttl = -3600.0 if value.kind == "expired" else 3600.0
        return orjson.dumps(server.token(USER, ttl=ttl)).decode()
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return orjson.dumps(value).decode()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(dump(v, server) for v in value) + "]"
    if isinstance(value, dict):
        items = (orjson.dumps(k).decode() + ":" + dump(v, server) for k, v in value.items())
        return "{" + ",".join(items) + "}"
    raise TypeError(value)


def nested(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# orjson reads JSON nested up to 1024 deep; deeper is invalid_json. Data nested deeper than
# orjson can *write* (254) is answered invalid_message (test_payload_limits.py).
DEEP = st.builds(nested, st.integers(1, 1500), st.sampled_from(["list", "object"]))
RAW_ODDITIES = st.sampled_from(
    [
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "-0",
        "1E+2",
        "9" * 400,
        "18446744073709551616",
        "-9223372036854775809",
        '"\\ud800"',
        '"\\udc00\\ud800"',
        '"\\u0000"',
        '"\\ud83d\\ude00"',
        "tru",
        "[1,]",
        "{}",
        "[]",
    ]
).map(Raw)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | RAW_ODDITIES
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ANY_VALUE = JSON_VALUES | DEEP
CHANNELS = st.sampled_from(
    ["news", "a", "presence-room", "private-x", "private-", "presence-", "x" * 128, "x" * 129]
) | st.text(max_size=20)
FIELDS = {
    "channel": CHANNELS | ANY_VALUE,
    "since": st.integers(min_value=-5, max_value=2**63 - 1) | ANY_VALUE,
    "epoch": st.text(max_size=20) | ANY_VALUE,
    "token": st.builds(Token, st.sampled_from(["valid", "expired"])) | ANY_VALUE,
    "recipientId": st.sampled_from([USER, "bob", "", "x" * 257]) | ANY_VALUE,
    "message": st.text(max_size=50) | ANY_VALUE,
    "data": ANY_VALUE,
}
PAYLOADS = st.none() | ANY_VALUE | st.fixed_dictionaries({}, optional=FIELDS)
TYPES = (
    st.sampled_from(REGISTERED)
    | st.sampled_from(["welcome", "error", "pong", "message", "", "PING", " ping"])
    | st.text(max_size=30)
    | JSON_VALUES
)
IDS = st.text(max_size=MAX_ID_LENGTH) | st.text(min_size=MAX_ID_LENGTH + 1) | JSON_VALUES
ENVELOPES = st.fixed_dictionaries(
    {}, optional={"type": TYPES, "payload": PAYLOADS, "id": IDS, "offset": ANY_VALUE}
)


VALID_CHANNELS = st.sampled_from(["news", "a", "presence-room", "private-x", "x" * 128])
OFFSETS = st.integers(min_value=0, max_value=2**64 - 1)
TOKENS = st.builds(Token, st.sampled_from(["valid", "expired"]))


def shaped(type_: str, required: dict[str, Any], optional: dict[str, Any]) -> Any:
    """A message of ``type_`` whose payload has the right shape, with fuzzed values in it."""
    payload = st.fixed_dictionaries(required, optional=optional)
    return st.fixed_dictionaries(
        {"type": st.just(type_), "payload": payload}, optional={"id": st.text(max_size=8)}
    )


SHAPED = st.one_of(
    shaped("ping", {}, {}),
    shaped("authenticate", {"token": TOKENS}, {"since": OFFSETS, "epoch": st.text(max_size=12)}),
    shaped("chat", {"recipientId": st.sampled_from([USER, "bob"]), "message": st.text()}, {}),
    shaped("subscribe", {"channel": VALID_CHANNELS}, {"since": OFFSETS, "epoch": st.text()}),
    shaped("unsubscribe", {"channel": VALID_CHANNELS}, {}),
    shaped("publish", {"channel": VALID_CHANNELS, "data": ANY_VALUE}, {}),
    shaped("presence", {"channel": VALID_CHANNELS}, {}),
)


@dataclass(frozen=True)
class Binary:
    data: bytes


MESSAGES = (
    SHAPED
    | st.sampled_from(REGISTERED).flatmap(
        lambda t: st.fixed_dictionaries(
            {"type": st.just(t)},
            optional={"payload": st.fixed_dictionaries({}, optional=FIELDS), "id": IDS},
        )
    )
    | ENVELOPES
    | ANY_VALUE
    | st.text(max_size=60).map(Raw)
    | st.binary(max_size=60).map(Binary)
)

# -- the oracle --------------------------------------------------------------------------------


def expected(text: str) -> tuple[str | None, Any]:
    """(the error code the envelope must get, or None when a handler decides; the id the
    answer must carry, or None), as the protocol and the decode order say."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return ErrorCode.INVALID_JSON, None
    if not isinstance(obj, dict):
        return ErrorCode.INVALID_MESSAGE, None
    msg_id = obj.get("id")
    if msg_id is not None and (not isinstance(msg_id, str) or len(msg_id) > MAX_ID_LENGTH):
        return ErrorCode.INVALID_MESSAGE, None
    type_, payload = obj.get("type"), obj.get("payload")
    if not isinstance(type_, str) or not type_:
        return ErrorCode.INVALID_MESSAGE, msg_id
    if payload is not None and not isinstance(payload, dict):
        return ErrorCode.INVALID_MESSAGE, msg_id
    if type_ not in REGISTERED:
        return ErrorCode.UNKNOWN_TYPE, msg_id
    return None, msg_id


async def exchange(ws: ClientConnection, message: str | bytes) -> list[dict[str, Any]]:
    """Send one message and a barrier ping; every frame received before the barrier's pong."""
    await ws.send(message)
    await ws.send(orjson.dumps({"type": "ping", "id": BARRIER}).decode())
    frames = []
    async with asyncio.timeout(10):
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str), "the server sent a binary frame"
            assert "Traceback (most recent call last)" not in raw, raw
            frame = orjson.loads(raw)
            assert isinstance(frame, dict) and isinstance(frame.get("type"), str), raw
            assert frame.get("payload") is None or isinstance(frame["payload"], dict), raw
            if frame.get("id") == BARRIER and frame["type"] == "pong":
                return frames
            frames.append(frame)


def check_answer(message: Any, text: str | None, frames: list[dict[str, Any]]) -> None:
    answers = [f for f in frames if f["type"] not in PUSHED]
    assert len(answers) == 1, f"{len(answers)} answers to {text!r}: {frames}"
    (answer,) = answers
    if text is None:  # a binary frame
        assert answer["type"] == "error", answer
        assert answer["payload"]["code"] == ErrorCode.INVALID_MESSAGE
        return
    code, msg_id = expected(text)
    assert answer.get("id") == msg_id, f"{text!r} -> {answer}"
    if code is not None:
        assert answer["type"] == "error" and answer["payload"]["code"] == code, (
            f"{text!r} -> {answer}"
        )
        if code == ErrorCode.UNKNOWN_TYPE:
            type_ = orjson.loads(text)["type"]
            assert answer["payload"]["message"] == f"Unknown message type: {type_}"
        return
    type_ = orjson.loads(text)["type"]
    if answer["type"] == "error":
        assert answer["payload"]["code"] in KNOWN_CODES - {ErrorCode.INTERNAL_ERROR}, answer
        reason = answer["payload"]["message"]
        assert isinstance(reason, str) and reason
        assert not any(mark in reason for mark in TRACEBACK_MARKS), answer
    elif type_ in REPLY:
        assert answer["type"] == REPLY[type_], f"{text!r} -> {answer}"


# -- the property ------------------------------------------------------------------------------


@pytest.fixture
async def fuzz_server(transport: str) -> Any:
    """Limits and the publish policy out of the way, so every message reaches its handler; the
    tasks running before any connection, to tell leaks from the server's own."""
    settings_ = make_settings(
        transport=transport, rate_limit=1e9, rate_burst=10**9, max_auth_attempts=10**9
    )
    async with run_server(settings_) as server:
        # Anyone may publish anywhere (an application policy), so any data reaches the store.
        server.hub.publish_policy(lambda principal, channel: True)
        yield server, set(asyncio.all_tasks())


def _settled(task: asyncio.Task[Any]) -> bool:
    # The heartbeat timer is one per hub (not per connection) and ends within an interval.
    return task.done() or task.get_coro().__qualname__ == "NativeServer._heartbeat"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(MESSAGES, min_size=1, max_size=4))
async def test_any_message_gets_a_documented_answer_and_leaves_the_hub_clean(
    fuzz_server: tuple[TestServer, set[asyncio.Task[Any]]], messages: list[Any]
) -> None:
    server, baseline = fuzz_server
    async with server.connect() as client:
        ws = client.ws
        assert orjson.loads(await ws.recv())["type"] == "welcome"
        for message in messages:
            if isinstance(message, Binary):
                frames = await exchange(ws, message.data)
                check_answer(message, None, frames)
            else:
                text = dump(message, server)
                assert len(text.encode()) <= server.settings.max_message_size
                frames = await exchange(ws, text)
                check_answer(message, text, frames)
        assert (await client.request("ping", id="last"))["type"] == "pong"
        assert ws.close_code is None  # no close, documented or not, with these limits
    assert await server.hub.wait_idle(5)
    assert server.hub.sessions == {}
    leftover = {
        t for t in asyncio.all_tasks() - baseline - {asyncio.current_task()} if not _settled(t)
    }
    if leftover:
        await asyncio.wait(leftover, timeout=5)
    assert [t for t in leftover if not t.done()] == []
