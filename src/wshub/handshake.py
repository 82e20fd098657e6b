"""What every transport checks before accepting a WebSocket: origin and handshake token."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import parse_qs

from .config import Settings

__all__ = ["handshake_token", "origin_allowed"]

logger = logging.getLogger("wshub.handshake")


def origin_allowed(settings: Settings, headers: Mapping[str, str]) -> bool:
    """True unless ``WS_ALLOWED_ORIGINS`` is set and the ``Origin`` header is not in it."""
    origins = settings.allowed_origins
    if not origins or "*" in origins:
        return True
    origin = headers.get("origin")
    if origin in origins:
        return True
    # Named (quoted: it comes from the client) so a misconfigured list is found from the log.
    logger.info("refused a handshake from origin %r: not in WS_ALLOWED_ORIGINS", origin)
    return False


def handshake_token(query: bytes | str, headers: Mapping[str, str]) -> str | None:
    """The token from ``Authorization: Bearer …`` or else from ``?token=…``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    if query:
        if isinstance(query, bytes):
            query = query.decode("latin-1")
        values = parse_qs(query).get("token")
        if values:
            return str(values[0])
    return None
