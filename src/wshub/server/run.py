"""Running the standalone server under uvicorn, with wshub's graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import re
import signal
import socket
import ssl
import threading
from collections.abc import Generator
from typing import Any

import uvicorn

from ..config import Settings, load_settings
from ..core.hub import Hub
from ..errors import BackendUnavailable, ConfigError
from .app import PAGES, create_app

__all__ = [
    "DrainingServer",
    "RedactTokens",
    "configure_logging",
    "serve",
    "tune_gc",
    "uvicorn_config",
]

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


class _StandaloneServer(DrainingServer):
    """``wshub serve``'s server: the hub's backends are started before uvicorn's lifespan (which
    then finds the hub started), so one that cannot be reached stops start-up with a
    :class:`BackendUnavailable` naming its setting instead of a lifespan traceback; "listening"
    is logged once the socket is bound."""

    startup_error: BackendUnavailable | None = None

    async def startup(self, sockets: Any = None) -> None:
        if self.hub is not None:
            try:
                await _start_backends(self.hub)
            except BackendUnavailable as exc:
                self.startup_error = exc
                self.should_exit = True
                return
        await super().startup(sockets)
        if self.started and self.hub is not None:
            settings = self.hub.settings
            bound = self.servers[0].sockets[0].getsockname() if self.servers else None
            port = bound[1] if bound else settings.port
            logger.info(
                "wshub listening on %s://%s:%d%s (store %s)",
                "wss" if settings.tls_cert else "ws",
                settings.host,
                port,
                settings.path,
                _redact(settings.store_url),
            )
            base = (
                f"{'https' if settings.tls_cert else 'http'}://{_browsable(settings.host)}:{port}"
            )
            for name, path in PAGES.items():
                logger.info("%s: %s%s", name, base, path)
            tune_gc()


#: The cyclic collector's thresholds for a server process (CPython's default is 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """A hub allocates a few short-lived objects per message and keeps many long-lived ones per
    connection; at CPython's default thresholds the cyclic collector scans that heap so often
    that it costs a fifth of chat-1000's throughput (measured: 37k -> 53k deliveries/s with
    the memory store). Reference counting frees almost everything anyway. What start-up made
    is frozen out of every future collection. ``wshub serve`` calls this once it listens; an
    app that mounts the hub may call it after its own start-up."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _browsable(host: str) -> str:
    """The host to put in a URL a browser on this machine can open."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&;\s])(?:access_)?token=)[^&\s\"']+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Rewrites ``token=<value>`` (in a URL's query, as uvicorn logs a request) to
    ``token=***`` in a record's message and its string arguments, keeping the arguments' shape
    (uvicorn's access formatter unpacks them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_tokens(a) if isinstance(a, str) else a for a in record.args)
        return True


def _redact_tokens(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1***", text) if "token=" in text.lower() else text


#: What websockets logs at INFO for every connection (under wshub serve's native transport on
#: the websockets.server logger, under uvicorn's WebSocket protocol on uvicorn.error).
_PER_CONNECTION = re.compile(r"connection (open|closed|rejected \(.*\))|HTTP response sent \(")


class _QuietServeLog(logging.Filter):
    """Drops websockets' line per connection (unless ``per_connection``), and the ERROR
    "ASGI callable returned without completing handshake." that uvicorn 0.54 logs after every
    handshake refused through the ASGI ``websocket.http.response`` extension (a wrong path's 404,
    the hub's 401/403/429), which it has answered."""

    def __init__(self, per_connection: bool) -> None:
        super().__init__()
        self.per_connection = per_connection

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if not isinstance(msg, str):
            return True
        if msg == "ASGI callable returned without completing handshake.":
            return False
        return self.per_connection or _PER_CONNECTION.fullmatch(msg) is None


#: Loggers that name request URLs (uvicorn logs each WebSocket handshake it answers with its path
#: and query on uvicorn.error).
_URL_LOGGERS = ("uvicorn.error", "uvicorn.access", "websockets.server")


def configure_logging(settings: Settings) -> None:
    """``wshub serve``'s logging: no token from a URL in any line, and websockets' own
    "connection open" / "connection closed" lines (one per connection at INFO) only with
    ``WS_LOG_LEVEL=debug``."""
    debug = settings.log_level.lower() == "debug"
    for name in _URL_LOGGERS:
        log = logging.getLogger(name)
        for old in [f for f in log.filters if isinstance(f, RedactTokens | _QuietServeLog)]:
            log.removeFilter(old)
        log.addFilter(RedactTokens())
        log.addFilter(_QuietServeLog(per_connection=debug))


def _redact(url: str) -> str:
    """A URL without the password it may hold."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


async def _start_backends(hub: Hub) -> None:
    """``hub.start()``, with a failure of a backend's ``start`` reported as one
    :class:`BackendUnavailable` naming the setting behind it."""
    backends: dict[int, tuple[Any, str]] = {}
    for backend, setting in (
        (hub.store, "WS_STORE_URL"),
        (hub.presence_registry, "WS_BROKER_URL"),
        (hub.broker, "WS_BROKER_URL"),
    ):
        backends.setdefault(id(backend), (backend, setting))
    started: list[Any] = []

    def tagged(backend: Any, setting: str) -> Any:
        original = backend.start

        async def start(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await original(*args, **kwargs)
            except BackendUnavailable as exc:
                raise BackendUnavailable(f"{setting}: {exc}") from exc
            except Exception as exc:
                raise BackendUnavailable(f"{setting}: {type(exc).__name__}: {exc}") from exc
            started.append(backend)
            return result

        return start

    for backend, setting in backends.values():
        setattr(backend, "start", tagged(backend, setting))  # noqa: B010 (shadows the method)
    try:
        await hub.start()
    except BackendUnavailable:
        for backend in reversed(started):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(backend.close(), 2)
        raise
    except Exception as exc:
        logger.debug("hub start-up failed", exc_info=True)
        raise BackendUnavailable(f"hub start-up failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for backend, _ in backends.values():
            with contextlib.suppress(AttributeError):
                delattr(backend, "start")


def _check_listen(settings: Settings) -> None:
    """Fail fast, in one line, when ``WS_HOST:WS_PORT`` cannot be bound (taken, not an address
    of this machine). uvicorn binds it for real afterwards."""
    if settings.port == 0:
        return
    where = f"{settings.host}:{settings.port}"
    try:
        infos = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"WS_HOST: cannot resolve {settings.host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise BackendUnavailable(
                        f"WS_PORT: {where} is already in use by another process"
                    ) from None
                raise BackendUnavailable(
                    f"WS_HOST/WS_PORT: cannot listen on {where}: {exc.strerror}"
                ) from None


def _load_tls(config: uvicorn.Config, settings: Settings) -> None:
    """Load uvicorn's config now, so an unreadable or bad certificate is one ConfigError."""
    if not (settings.tls_cert and settings.tls_key):
        config.load()
        return
    for name, path in (("WS_TLS_CERT", settings.tls_cert), ("WS_TLS_KEY", settings.tls_key)):
        if not os.access(path, os.R_OK):
            problem = "no such file" if not os.path.exists(path) else "not readable"
            raise ConfigError(f"{name}: cannot read the file ({problem})")
    try:
        config.load()
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise ConfigError(
            f"WS_TLS_CERT/WS_TLS_KEY: not a PEM certificate and its private key ({reason})"
        ) from None


def serve(settings: Settings | None = None) -> None:
    """Run the standalone server until SIGINT/SIGTERM.

    Start-up stops with :class:`ConfigError` (settings that cannot work: exit status 2 from
    ``wshub serve``) or :class:`BackendUnavailable` (the port is taken, a store or broker cannot
    be reached: exit status 1), each with a one-line message naming the setting."""
    settings = settings if settings is not None else load_settings()
    configure_logging(settings)
    app = create_app(settings)
    hub: Hub = app.state.hub
    config = uvicorn_config(app, settings, hub)
    _load_tls(config, settings)
    _check_listen(settings)
    server = _StandaloneServer(config, hub)
    server.run()
    if server.startup_error is not None:
        raise server.startup_error
