"""The envelope codec: table-driven, no event loop."""

from __future__ import annotations

import orjson
import pytest

from wshub.errors import InvalidMessage
from wshub.framing import close_frame, frame
from wshub.protocol import Frame, Incoming, decode, encode, with_offset


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type":"ping"}', ("ping", {}, None)),
        ('{"type":"ping","payload":null}', ("ping", {}, None)),
        ('{"type":"x","payload":{"a":1},"id":"r1"}', ("x", {"a": 1}, "r1")),
        (b'{"type":"x","extra":true}', ("x", {}, None)),
    ],
)
def test_decode_accepts_valid_envelopes(raw: str | bytes, expected: Incoming) -> None:
    assert decode(raw) == expected


@pytest.mark.parametrize(
    ("raw", "code", "fragment", "echo_id"),
    [
        ("nope", "invalid_json", "not valid JSON", None),
        ("", "invalid_json", "not valid JSON", None),
        ("[1,2]", "invalid_message", "JSON object", None),
        ('{"payload":{}}', "invalid_message", "type", None),
        ('{"type":""}', "invalid_message", "type", None),
        ('{"type":5,"id":"a"}', "invalid_message", "type", "a"),
        ('{"type":"x","payload":[1]}', "invalid_message", "payload", None),
        ('{"type":"x","payload":"s","id":"b"}', "invalid_message", "payload", "b"),
        ('{"type":"x","id":5}', "invalid_message", "id", None),
        ('{"type":"x","id":"' + "a" * 65 + '"}', "invalid_message", "id", None),
    ],
)
def test_decode_rejects_bad_envelopes_naming_the_field(
    raw: str, code: str, fragment: str, echo_id: str | None
) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(raw)
    assert info.value.code == code
    assert fragment in info.value.message
    assert getattr(info.value, "id", None) == echo_id


def test_encode_orders_keys_and_omits_absent_fields() -> None:
    assert encode("pong", {"timestamp": 1}) == b'{"type":"pong","payload":{"timestamp":1}}'
    assert encode("x", {}, id="r", offset=3) == b'{"type":"x","payload":{},"id":"r","offset":3}'


def test_with_offset_adds_the_offset_without_decoding() -> None:
    env = encode("chat", {"message": "hi"})
    assert orjson.loads(with_offset(env, 12)) == {
        "type": "chat",
        "payload": {"message": "hi"},
        "offset": 12,
    }


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_server_frames_use_the_shortest_length_encoding(size: int) -> None:
    data = b"x" * size
    wire = frame(data)
    assert wire[0] == 0x81
    if size < 126:
        assert wire[1] == size and wire[2:] == data
    elif size < 65536:
        assert wire[1] == 126 and int.from_bytes(wire[2:4], "big") == size
    else:
        assert wire[1] == 127 and int.from_bytes(wire[2:10], "big") == size
    assert wire.endswith(data)


def test_frame_caches_text_and_wire_forms() -> None:
    f = Frame(b'{"a":"\xc3\xa9"}')
    assert f.text == '{"a":"é"}' and f.text is f.text
    assert f.wire is f.wire and f.wire.endswith(f.data)


def test_close_frame_truncates_long_reasons_to_the_control_frame_limit() -> None:
    wire = close_frame(1001, "x" * 500)
    assert wire[0] == 0x88 and wire[1] == 125
    assert int.from_bytes(wire[2:4], "big") == 1001
