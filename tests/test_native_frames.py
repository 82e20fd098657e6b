"""parse_frames: the native transport's frame parser, table-driven, no sockets."""

from __future__ import annotations

import pytest

from wshub.native import FRAGMENT_OVERHEAD, ProtocolViolation, parse_frames

from .rawws import client_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_one_frame_of_any_length_encoding_is_unmasked(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = client_frame(payload)
    frames, used = parse_frames(data, 1 << 20)
    assert frames == [(0x1, True, payload)] and used == len(data)


def test_several_frames_and_a_partial_one() -> None:
    a, b, c = client_frame(b"one"), client_frame(b"two", 0x9), client_frame(b"three")
    data = a + b + c[:-2]
    frames, used = parse_frames(data, 1024)
    assert frames == [(0x1, True, b"one"), (0x9, True, b"two")]
    assert used == len(a) + len(b)
    for cut in range(0, len(a)):  # every prefix of a frame is "not yet"
        assert parse_frames(a[:cut], 1024) == ([], 0)


def test_nothing_after_a_close_frame_is_read() -> None:
    data = client_frame(b"\x03\xe8", 0x8) + client_frame(b"ignored")
    frames, used = parse_frames(data, 1024)
    assert frames == [(0x8, True, b"\x03\xe8")] and used < len(data)


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (client_frame(b"x", mask=False), 1002, "not masked"),
        (client_frame(b"x", rsv=4), 1002, "reserved bits"),
        (client_frame(b"x", rsv=1), 1002, "reserved bits"),
        (client_frame(b"x" * 126, 0x9), 1002, "control"),
        (client_frame(b"x", 0x9, fin=False), 1002, "control"),
    ],
)
def test_frames_that_fail_the_connection(data: bytes, code: int, reason: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        parse_frames(client_frame(b"ok") + data, 1024)
    assert info.value.code == code and reason in info.value.reason
    assert info.value.frames == [(0x1, True, b"ok")]  # what came before is still handled


def test_size_is_refused_from_the_header_before_the_payload_arrives() -> None:
    header_only = client_frame(b"x" * 5000)[:8]  # 16-bit length + mask key, no payload
    with pytest.raises(ProtocolViolation) as info:
        parse_frames(header_only, 4096)
    assert info.value.code == 1009


def test_size_counts_the_fragments_of_a_message() -> None:
    frames, _ = parse_frames(client_frame(b"a" * 60, fin=False), 200)
    assert frames == [(0x1, False, b"a" * 60)]
    with pytest.raises(ProtocolViolation) as info:  # 60 already charged + 50 + 64 > 160
        parse_frames(client_frame(b"b" * 50, 0x0), 160, 60)
    assert info.value.code == 1009
    with pytest.raises(ProtocolViolation):  # same, within one read
        parse_frames(client_frame(b"a" * 60, fin=False) + client_frame(b"b" * 50, 0x0), 160)
    frames, _ = parse_frames(client_frame(b"b" * 50, 0x0), 174, 60)  # exactly at the limit
    assert frames == [(0x0, True, b"b" * 50)]


def test_each_continuation_frame_costs_its_overhead_even_when_empty() -> None:
    """A single frame may use the whole limit; each continuation frame costs
    FRAGMENT_OVERHEAD on top of its payload, so empty ones reach the limit too."""
    limit = 10 * FRAGMENT_OVERHEAD
    frames, _ = parse_frames(client_frame(b"x" * limit), limit)
    assert len(frames) == 1
    start = client_frame(b"", fin=False)
    fits = start + client_frame(b"", 0x0, fin=False) * 10
    frames, used = parse_frames(fits, limit)
    assert len(frames) == 11 and used == len(fits)
    with pytest.raises(ProtocolViolation) as info:
        parse_frames(fits + client_frame(b"", 0x0, fin=False), limit)
    assert info.value.code == 1009 and len(info.value.frames) == 11
