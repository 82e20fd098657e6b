"""What the Autobahn cases are expected to report for wshub's native WebSocket layer.

Every case must end OK, NON-STRICT or INFORMATIONAL (both verdicts: the message exchange and the
closing handshake), or for a limits case (9.x) in one of wshub's documented limits. Each accepted
NON-STRICT, INFORMATIONAL and limit case is listed here with the reason, and in README.md beside
this file; a new one fails the test until someone looks at it.
"""

from __future__ import annotations

__all__ = [
    "ACCEPTABLE",
    "COMPRESSION_FAST_CASES",
    "COMPRESSION_GROUPS",
    "FAST_CASES",
    "INFORMATIONAL",
    "LIMITS",
    "NON_STRICT",
    "SLOW_CASES",
    "UNIMPLEMENTED",
]

#: Verdicts that count as conforming (Autobahn's own definition of a pass).
ACCEPTABLE = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})

#: Run by ``make test``: framing, pings, reserved bits, opcodes, fragmentation, UTF-8, closing,
#: and 10.1.1 (auto-fragmentation); 9.x (limits and performance) is slow and runs on its own.
FAST_CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*")
SLOW_CASES = ("9.*",)

#: permessage-deflate (RFC 7692): 12.x (the default offer, five kinds of data) and 13.x (the
#: offer's parameters), each in 18 message sizes, 1,000 echoes per case.
COMPRESSION_GROUPS = ("12", "13")
#: What ``make test`` runs of them: every group and offer with its three smallest sizes (16, 64
#: and 256 bytes, 2-3 s in all), and one message the client fragments (8 KiB in 256-byte frames).
#: The larger sizes take ~5 minutes on 2 CPUs (mostly the runner's own compression): all of 12.x
#: and 13.x is ``python -m tests.conformance.run --cases '12.*' '13.*'`` (``make conformance``).
COMPRESSION_FAST_CASES = tuple(
    f"{group}.{n}"
    for group in ("12.1", "12.2", "12.3", "12.4", "12.5", *(f"13.{k}" for k in range(1, 8)))
    for n in (1, 2, 3)
) + ("12.1.11",)

_SMALL_SERVER_WINDOW = (
    "The offer asks for server_max_window_bits=8 and nothing else: wshub compresses each "
    "publication once, with the 32 KiB window, for every subscriber, so it declines offers that "
    "limit the server's window below 15 (RFC 7692 7.1.2.1 allows declining) and the connection "
    "is not compressed. 13.7.x lists such an offer first and then acceptable ones: OK."
)

#: Compression cases that end UNIMPLEMENTED (permessage-deflate not negotiated), with the reason.
#: Every other 12.x/13.x case must be OK. Cases that need context takeover are not among them:
#: a client that does not offer no-context-takeover still gets it (RFC 7692 7.1.1.1 and 7.1.1.2
#: let the server add ``server_no_context_takeover`` and ``client_no_context_takeover``).
UNIMPLEMENTED: dict[str, str] = {
    f"13.{group}.{n}": _SMALL_SERVER_WINDOW for group in (3, 5) for n in range(1, 19)
}

_LATE_UTF8 = (
    "HubProtocol checks UTF-8 when a text message is complete (one decode of the joined "
    "fragments), not fragment by fragment, so an invalid sequence in an early fragment is "
    "noticed, and the connection failed with 1007, only after the last fragment. RFC 6455 8.1 "
    "allows either; the case prefers failing fast."
)

NON_STRICT: dict[str, str] = {
    "6.4.1": _LATE_UTF8,
    "6.4.2": _LATE_UTF8,
    "6.4.3": _LATE_UTF8,
    "6.4.4": _LATE_UTF8,
}

INFORMATIONAL: dict[str, str] = {
    "7.1.6": "A 256 KiB message, a close and a ping: the close is answered (1000), the ping "
    "after it ignored; the spec leaves open whether the large message is echoed first.",
    "7.13.1": "Close code 5000 (outside 0-4999): failed with 1002 (the spec does not say).",
    "7.13.2": "Close code 65536 (outside the range): failed with 1002 (the spec does not say).",
}

#: Limits and performance cases (9.x) that end in a deliberate limit of ``HubProtocol``, with
#: the close code it sends. Autobahn counts a failed limits case as no conformance problem.
#: None today: 9.3.x and 9.4.x (a 4 MiB message in up to 65,536 fragments) used to end in a cap
#: of 1,024 fragments (1009); fragments now cost ``wshub.native.FRAGMENT_OVERHEAD`` bytes each
#: against the size limit instead, and those messages are within it.
LIMITS: dict[str, tuple[int, str]] = {}
