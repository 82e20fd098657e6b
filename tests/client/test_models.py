"""Parsing server frames and mapping error codes to exceptions. Pure."""

from __future__ import annotations

import pytest

from wshub.client import (
    AuthenticationError,
    ChannelMessage,
    Envelope,
    ForbiddenError,
    InternalServerError,
    InvalidMessageError,
    ServerError,
    UnknownTypeError,
)
from wshub.client.errors import server_error


def test_an_envelope_keeps_type_payload_id_and_offset() -> None:
    env = Envelope.parse('{"type":"chat","payload":{"message":"hi"},"offset":12}')
    assert env == Envelope("chat", {"message": "hi"}, None, 12)
    reply = Envelope.parse('{"type":"pong","payload":null,"id":"r1"}')
    assert reply.payload == {} and reply.id == "r1" and reply.offset is None


@pytest.mark.parametrize("raw", ["nope", "[]", '{"payload":{}}', '{"type":"x","payload":[1]}'])
def test_frames_that_are_not_envelopes_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        Envelope.parse(raw)


def test_a_channel_message_reads_the_message_payload() -> None:
    payload = {"channel": "news", "data": {"x": 1}, "offset": 3, "timestamp": 5, "from": "amy"}
    assert ChannelMessage.from_payload(payload) == ChannelMessage("news", {"x": 1}, 3, 5, "amy")
    with pytest.raises(ValueError):
        ChannelMessage.from_payload({"channel": "news"})


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("invalid_json", InvalidMessageError),
        ("invalid_message", InvalidMessageError),
        ("unknown_type", UnknownTypeError),
        ("auth_failed", AuthenticationError),
        ("forbidden", ForbiddenError),
        ("internal_error", InternalServerError),
        ("something_new", InternalServerError),
    ],
)
def test_error_codes_map_to_typed_exceptions(code: str, cls: type[ServerError]) -> None:
    exc = server_error({"code": code, "message": "why"}, id="r7")
    assert type(exc) is cls
    assert (exc.code, exc.message, exc.id) == (code, "why", "r7")
