"""Running the standalone server under uvicorn, with wshub's graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Generator
from typing import Any

import uvicorn

from ..config import Settings
from ..core.hub import Hub
from .app import create_app

__all__ = ["DrainingServer", "serve", "uvicorn_config"]

logger = logging.getLogger("wshub.server")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that on shutdown every WebSocket client first gets close code 1001
    (uvicorn alone sends 1012), and a signal-triggered shutdown exits with status 0."""

    def __init__(self, config: uvicorn.Config, hub: Hub | None) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: Any = None) -> None:
        if self.hub is not None:
            for server in self.servers:
                server.close()
            await self.hub.drain()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_config(
    app: Any, settings: Settings, hub: Hub | None = None, **overrides: Any
) -> uvicorn.Config:
    """The uvicorn settings that match the hub's: message size, heartbeat, shutdown timeout,
    and with ``WS_TRANSPORT=native`` (and a hub) wshub's own WebSocket protocol."""
    heartbeat = settings.heartbeat_interval / 1000
    from ..uvicorn_protocols import GuardedHttpProtocol, SafeWebSocketsProtocol

    ws: Any = SafeWebSocketsProtocol
    if settings.transport == "native" and hub is not None:
        from ..native import protocol_for

        ws = protocol_for(hub)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": ws,
        "http": GuardedHttpProtocol,
        "ws_max_size": settings.max_message_size,
        "ws_ping_interval": heartbeat,
        "ws_ping_timeout": heartbeat,
        "ws_per_message_deflate": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout / 1000 + 1,
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "server_header": False,
    }
    if settings.tls_cert and settings.tls_key:
        options["ssl_certfile"] = settings.tls_cert
        options["ssl_keyfile"] = settings.tls_key
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(settings: Settings | None = None) -> None:
    """Run the standalone server until SIGINT/SIGTERM."""
    settings = settings if settings is not None else Settings()
    app = create_app(settings)
    hub: Hub = app.state.hub
    server = DrainingServer(uvicorn_config(app, settings, hub), hub)
    scheme = "wss" if settings.tls_cert else "ws"
    logger.info(
        "wshub listening on %s://%s:%d%s (store %s)",
        scheme,
        settings.host,
        settings.port,
        settings.path,
        settings.store_url,
    )
    server.run()
