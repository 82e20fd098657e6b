"""Server-Sent Events + POST: the hub's endpoint for networks that block WebSockets.

::

    GET  {WS_PATH}/sse?token=...          text/event-stream: one event per server envelope
    POST {WS_PATH}/sse/{connectionId}     X-Wshub-Session: <sessionKey>; envelope(s) -> 202

The event stream is a :class:`~wshub.interfaces.Connection` like a WebSocket's (a bounded
:class:`~wshub.core.outbox.Outbox` drained by a writer task), so the hub sees an ordinary
session: authentication, limits, rate limit, channels, offsets, origin check and per-IP caps
are the WebSocket's. Each envelope is one event (``data: <JSON>``, with ``id: <offset>`` for a
message of the user's stream, so ``Last-Event-ID`` resumes it); the first is ``welcome``, with
the stream's ``sessionKey``. Where a WebSocket would be closed, the stream sends
``{"type": "close", "payload": {"code", "reason"}}`` and ends. A ``: ping`` comment goes out
every ``WS_HEARTBEAT_INTERVAL`` so that proxies keep the response open.

Pure ASGI: :class:`SSEApp` mounts next to :class:`~wshub.asgi.WebSocketApp` in any framework.
A POST that reaches another node than the one holding its stream is forwarded to that node
through the hub's broker, on the topic ``sse:<node id>`` (a connection id starts with its
node's id), and answered with that node's status: no sticky sessions needed.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import secrets
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import orjson

from ..core.hub import Hub
from ..core.outbox import Outbox
from ..core.session import Session
from ..core.streams import pack
from ..errors import AuthFailed, BackendUnavailable, Forbidden
from ..handshake import handshake_token, origin_allowed
from ..protocol import CloseCode, Frame, FrameBatch
from ..types import Principal

__all__ = ["SESSION_HEADER", "SSEApp", "SSEConnection", "sse_stats"]

logger = logging.getLogger("wshub.sse")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The request header of a POST that carries the stream's ``sessionKey``.
SESSION_HEADER = "x-wshub-session"
#: What ``welcome.features`` gains on an event stream.
FEATURE = "sse"
#: Broker topic of a node's forwarded POSTs and their answers: ``sse:<node id>``.
TOPIC_PREFIX = "sse:"
#: Seconds a forwarded POST waits for the node holding the stream to answer (then 504).
FORWARD_TIMEOUT = 5.0
#: Seconds the close event may take to reach a client that does not read (then the stream ends).
CLOSE_TIMEOUT = 5.0

_PING = Frame(b"")  # the heartbeat comment, queued like a frame (never counted: 0 bytes)
_OFFSET = b',"offset":'
_CHANNEL_MESSAGE = b'{"type":"message",'
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
]


def _event(frame: Frame) -> bytes:
    """One SSE event for an envelope; ``id:`` is the offset of a user-stream message (a channel
    ``message`` carries its channel's offset, which ``Last-Event-ID`` must not resume from)."""
    data = frame.data
    head = b""
    # The envelope's own "offset" is its last member (protocol.encode, with_offset): look there.
    at = data.rfind(_OFFSET, max(0, len(data) - 32))
    if at > 0 and data.endswith(b"}") and not data.startswith(_CHANNEL_MESSAGE):
        digits = data[at + len(_OFFSET) : -1]
        if digits.isdigit():
            head = b"id: " + digits + b"\n"
    if b"\n" in data or b"\r" in data:  # not from orjson; one data: line per line keeps it whole
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    return head + b"data: " + data + b"\n\n"


def _close_event(code: int, reason: str) -> bytes:
    envelope = orjson.dumps({"type": "close", "payload": {"code": code, "reason": reason}})
    return b"data: " + envelope + b"\n\n"


class SSEConnection:
    """:class:`~wshub.interfaces.Connection` over an ASGI ``text/event-stream`` response.

    ``send`` and ``send_batch`` only queue (bounded); :meth:`run_writer` writes. The first frame
    (``welcome``) gains ``sessionKey``, the ``sse`` feature and ``userId`` (the stream may be
    authenticated after ``welcome``, to resume with ``since``)."""

    __slots__ = (
        "_close",
        "_drain_timer",
        "_dropped",
        "_ping_timer",
        "_send",
        "_writer",
        "_writing",
        "drain_timeout",
        "heartbeat",
        "outbox",
        "session_key",
        "user_id",
        "welcomed",
    )

    def __init__(
        self,
        send: Send,
        *,
        max_bytes: int,
        max_frames: int,
        session_key: str,
        user_id: str | None = None,
        heartbeat: float = 30.0,
        drain_timeout: float = 10.0,
    ) -> None:
        self._send = send
        self.outbox = Outbox(max_bytes=max_bytes, max_frames=max_frames)
        self.session_key = session_key
        self.user_id = user_id
        self.heartbeat = heartbeat
        self.drain_timeout = drain_timeout
        self.welcomed = False
        self._close: tuple[int, str] | None = None
        self._dropped = False
        self._writer: asyncio.Task[None] | None = None
        self._writing = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    @property
    def closing(self) -> bool:
        return self._close is not None or self.outbox.closed

    def send(self, frame: Frame) -> bool:
        if not self.welcomed:
            frame = self._welcome(frame)
        return self.outbox.put(frame)

    def send_batch(self, batch: FrameBatch) -> bool:
        if not self.welcomed:  # never: welcome is a session's first frame
            return all(self.send(f) for f in batch.frames)
        return self.outbox.put_all(batch.frames, batch.nbytes)

    def _welcome(self, frame: Frame) -> Frame:
        self.welcomed = True
        try:
            envelope = orjson.loads(frame.data)
        except orjson.JSONDecodeError:
            return frame
        if not isinstance(envelope, dict) or envelope.get("type") != "welcome":
            return frame
        payload = envelope.get("payload")
        if isinstance(payload, dict):
            payload["sessionKey"] = self.session_key
            if self.user_id is not None:
                payload["userId"] = self.user_id
            features = payload.get("features")
            if isinstance(features, list) and FEATURE not in features:
                features.append(FEATURE)
        return Frame(orjson.dumps(envelope))

    def close(self, code: int = 1000, reason: str = "", *, drain: bool = True) -> None:
        """End the stream with a close event: after what is queued (``drain``, at most
        ``drain_timeout`` seconds), or now (a slow consumer: the queue is dropped)."""
        if self._close is None:
            self._close = (code, reason)
        self.outbox.close(drop=not drain)
        if not drain:
            self._drop()
        elif self._drain_timer is None and not self._dropped:
            loop = asyncio.get_running_loop()
            self._drain_timer = loop.call_later(self.drain_timeout, self._drop)

    def abort(self) -> None:
        """The client is gone: drop whatever is queued and stop the writer without a close."""
        self._close = None
        self.outbox.close(drop=True)
        self._drop()

    def _drop(self) -> None:
        self._dropped = True
        writer = self._writer
        if self._writing and writer is not None and writer is not asyncio.current_task():
            writer.cancel()  # blocked in the server's send, waiting for the client to read

    def _ping(self) -> None:
        self._ping_timer = None
        if self.outbox.closed:
            return
        self.outbox.put(_PING)  # a full outbox needs no heartbeat: it is busy
        self._ping_timer = asyncio.get_running_loop().call_later(self.heartbeat, self._ping)

    async def run_writer(self) -> None:
        """Write queued frames as events until closed; then the close event, if one is due."""
        self._writer = asyncio.current_task()
        send = self._send
        if self.heartbeat > 0:
            loop = asyncio.get_running_loop()
            self._ping_timer = loop.call_later(self.heartbeat, self._ping)
        try:
            while frames := await self.outbox.take():
                if self._dropped:
                    break
                chunk = b"".join(b": ping\n\n" if f is _PING else _event(f) for f in frames)
                self._writing = True
                try:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not self._dropped or task is None or task.uncancel():
                        raise  # cancelled by someone else
                    break
                finally:
                    self._writing = False
            if self._close is not None:
                code, reason = self._close
                final = {"type": "http.response.body", "body": _close_event(code, reason)}
                await asyncio.wait_for(send(final), CLOSE_TIMEOUT)
        except Exception as exc:  # the client went away mid-write (or never read the close)
            logger.debug("writer stopped: %r", exc)
        finally:
            for timer in (self._ping_timer, self._drain_timer):
                if timer is not None:
                    timer.cancel()
            self._ping_timer = self._drain_timer = None


class _Stream:
    """An open event stream on this node: its session, connection and key."""

    __slots__ = ("conn", "key", "lock", "session")

    def __init__(self, session: Session, conn: SSEConnection, key: str) -> None:
        self.session = session
        self.conn = conn
        self.key = key
        # One POST's envelopes at a time, in arrival order: the session handles a connection's
        # messages one after the other, as a WebSocket's.
        self.lock = asyncio.Lock()


class _Node:
    """This node's event streams and the forwarding of POSTs between nodes; one per hub,
    shared by every :class:`SSEApp` of that hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.streams: dict[str, _Stream] = {}
        self.opened = 0
        self.forwarded = 0
        self.topic = TOPIC_PREFIX + hub.node_id
        self._listening: asyncio.Future[None] | None = None
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        hub.topic_handlers[self.topic] = self._on_message

    @property
    def clustered(self) -> bool:
        """Whether other nodes may hold streams (a broker that reaches no other node: no)."""
        return not getattr(self.hub.broker, "solo", False)

    async def listen(self) -> None:
        """Subscribe this node to its topic, once, before a stream or a forward needs it."""
        if not self.clustered:
            return
        if self._listening is None or (
            self._listening.done() and self._listening.exception() is not None
        ):
            self._listening = asyncio.ensure_future(self.hub.broker.subscribe(self.topic))
        await asyncio.shield(self._listening)

    async def deliver(self, conn_id: str, key: str | None, envelopes: list[bytes | str]) -> int:
        """Hand a POST's envelopes to a stream of this node; the HTTP status to answer."""
        stream = self.streams.get(conn_id)
        if stream is None:
            return 404
        if not key or not hmac.compare_digest(key.encode(), stream.key.encode()):
            return 403
        session = stream.session
        async with stream.lock:
            for raw in envelopes:
                if not session.open:
                    break
                await session.receive(raw)
        return 202

    async def forward(
        self, node: str, conn_id: str, key: str | None, envelopes: list[bytes | str]
    ) -> int:
        """Send a POST to the node holding its stream; that node's status (504: no answer)."""
        if not self.clustered or node not in await self.hub.nodes():
            return 404
        await self.listen()  # the answer comes on this node's topic
        request = f"{self.hub.node_id}-{next(self._ids)}"
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        body = {
            "op": "post",
            "req": request,
            "from": self.topic,
            "conn": conn_id,
            "key": key,
            "envelopes": [e if isinstance(e, str) else e.decode() for e in envelopes],
        }
        try:
            await self.hub.broker.publish(TOPIC_PREFIX + node, pack(0, orjson.dumps(body)))
            self.forwarded += 1
            return await asyncio.wait_for(future, FORWARD_TIMEOUT)
        except TimeoutError:
            return 504
        finally:
            self._pending.pop(request, None)

    def _on_message(self, body: bytes) -> None:
        """A message on this node's topic: a POST forwarded here, or the answer to ours."""
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            logger.warning("dropping a malformed message on %s", self.topic)
            return
        if msg.get("op") == "ack":
            future = self._pending.get(str(msg.get("req")))
            status = msg.get("status")
            if future is not None and not future.done() and isinstance(status, int):
                future.set_result(status)
            return
        reply_to, envelopes = msg.get("from"), msg.get("envelopes")
        if (
            msg.get("op") != "post"
            or not isinstance(reply_to, str)
            or not reply_to.startswith(TOPIC_PREFIX)
            or not isinstance(envelopes, list)
        ):
            logger.warning("dropping a malformed message on %s", self.topic)
            return
        task = asyncio.ensure_future(self._answer(msg, reply_to, [str(e) for e in envelopes]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: dict[str, Any], reply_to: str, envelopes: list[str]) -> None:
        key = msg.get("key")
        status = await self.deliver(
            str(msg.get("conn")), key if isinstance(key, str) else None, list(envelopes)
        )
        answer = orjson.dumps({"op": "ack", "req": msg.get("req"), "status": status})
        try:
            await self.hub.broker.publish(reply_to, pack(0, answer))
        except BackendUnavailable as exc:
            logger.warning("cannot answer a forwarded POST: %s", exc)


_nodes: weakref.WeakKeyDictionary[Hub, _Node] = weakref.WeakKeyDictionary()


def _node(hub: Hub) -> _Node:
    node = _nodes.get(hub)
    if node is None:
        node = _nodes[hub] = _Node(hub)
    return node


def sse_stats(hub: Hub) -> tuple[int, int]:
    """``(open event streams, event streams opened)`` on this node (for ``/metrics``)."""
    node = _nodes.get(hub)
    return (len(node.streams), node.opened) if node is not None else (0, 0)


class SSEApp:
    """The event-stream endpoint as an ASGI app, for two routes next to the WebSocket's::

        sse = SSEApp(hub)                                           # Starlette / FastAPI
        app.router.routes += [
            Route("/ws/sse", sse, methods=["GET", "OPTIONS"]),
            Route("/ws/sse/{connection_id}", sse, methods=["POST", "OPTIONS"]),
        ]

    ``GET .../sse`` opens a stream, ``POST .../sse/<connectionId>`` sends envelopes to it: only
    the last path segment is read, so a mount (``app.mount("/ws/sse", sse)``) works too."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.node = _node(hub)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        last = path.rstrip("/").rpartition("/")[2]
        method = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cors = self._cors(headers)
        if cors is None:
            await _respond(send, 403, "origin not allowed")
            return
        if method == "OPTIONS":
            await _preflight(send, cors)
        elif last in ("", "sse"):
            if method in ("GET", "HEAD"):
                await self._stream(scope, receive, send, headers, cors)
            else:
                await _respond(send, 405, "open the stream with GET", cors, allow=b"GET")
        elif method == "POST":
            await self._post(last, receive, send, headers, cors)
        else:
            await _respond(send, 405, "send envelopes with POST", cors, allow=b"POST")

    def _cors(self, headers: dict[str, str]) -> list[tuple[bytes, bytes]] | None:
        """None when the origin is refused; else the CORS headers for it (none without one)."""
        if not origin_allowed(self.hub.settings, headers):
            return None
        origin = headers.get("origin")
        if origin is None:
            return []
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"origin")]

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        hub, node = self.hub, self.node
        settings = hub.settings
        query = scope.get("query_string", b"")
        principal: Principal | None = None
        token = handshake_token(query, headers)
        if token:
            try:
                principal = await hub.verify_token(token)
            except AuthFailed as exc:
                await _respond(send, 401, exc.message, cors)
                return
            except BackendUnavailable as exc:  # revocations unreadable, or not started
                logger.warning("refusing an SSE stream: %s", exc)
                await _respond(send, 503, "service temporarily unavailable", cors)
                return
        params = parse_qs(query.decode("latin-1")) if query else {}
        # Last-Event-ID (an EventSource reconnecting) wins over ?since=.
        raw_since = headers.get("last-event-id") or (params.get("since") or [""])[0]
        epoch = (params.get("epoch") or [None])[0]
        since: int | None = None
        if raw_since:
            if not raw_since.isdigit():
                await _respond(send, 400, "since / Last-Event-ID: an offset", cors)
                return
            since = int(raw_since)
        client = scope.get("client")
        ip = client[0] if client else None
        refused = await hub.admit(ip, principal)
        if refused is not None:
            await _respond(send, refused[0], refused[1], cors)
            return
        try:
            await node.listen()
        except BackendUnavailable as exc:
            await _respond(send, 503, f"service temporarily unavailable: {exc}", cors)
            return
        start = {"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS + cors}
        if scope["method"] == "HEAD":
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        await send(start)
        key = secrets.token_urlsafe(24)
        conn = SSEConnection(
            send,
            max_bytes=settings.outbox_max_bytes,
            max_frames=settings.outbox_max_messages,
            session_key=key,
            user_id=principal.user_id if principal else None,
            heartbeat=settings.heartbeat_interval / 1000,
            drain_timeout=settings.shutdown_timeout / 1000,
        )
        session = hub.open_session(
            conn,
            remote=f"{client[0]}:{client[1]}" if client else None,
            ip=ip,
            headers=headers,
        )
        stream = node.streams[session.id] = _Stream(session, conn, key)
        node.opened += 1
        writer = asyncio.create_task(conn.run_writer())
        watcher = asyncio.create_task(_watch_disconnect(receive, conn))
        try:
            async with stream.lock:  # POSTs wait for authenticated, as a WebSocket's messages
                await _start(hub, session, principal, since, epoch)
            await writer
        finally:
            node.streams.pop(session.id, None)
            hub.close_session(session)
            watcher.cancel()
            if not conn.closing:
                conn.abort()
            if not writer.done():
                try:
                    await asyncio.wait_for(writer, settings.shutdown_timeout / 1000 + 1)
                except (TimeoutError, asyncio.CancelledError):
                    writer.cancel()

    async def _post(
        self,
        conn_id: str,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        settings = self.hub.settings
        limit = settings.max_message_size
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _respond(send, 413, f"body over {limit} bytes (WS_MAX_MESSAGE_SIZE)", cors)
            return
        try:
            async with asyncio.timeout(settings.request_timeout):
                body = await _read_body(receive, limit)
        except TimeoutError:
            await _respond(send, 408, "body not received in time (WS_REQUEST_TIMEOUT)", cors)
            return
        if body is None:
            await _respond(send, 413, f"body over {limit} bytes (WS_MAX_MESSAGE_SIZE)", cors)
            return
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _respond(send, 400, "the body must be a JSON envelope or array of them", cors)
            return
        envelopes: list[bytes | str] = (
            [orjson.dumps(v) for v in value] if isinstance(value, list) else [body]
        )
        key = headers.get(SESSION_HEADER)
        owner = conn_id.partition("-")[0]
        try:
            if owner == self.hub.node_id:
                status = await self.node.deliver(conn_id, key, envelopes)
            else:
                status = await self.node.forward(owner, conn_id, key, envelopes)
        except BackendUnavailable as exc:
            await _respond(send, 503, f"service temporarily unavailable: {exc}", cors)
            return
        reasons = {
            202: "accepted",
            403: f"missing or wrong {SESSION_HEADER}",
            404: "no such event stream",
            504: "the node holding the stream did not answer",
        }
        await _respond(send, status, reasons.get(status, ""), cors)


async def _start(
    hub: Hub, session: Session, principal: Principal | None, since: int | None, epoch: str | None
) -> None:
    """``welcome``, then for a token in the request what follows ``authenticate`` (with
    ``since``/``epoch`` when resuming: the WebSocket handshake has no place for them)."""
    if principal is None or since is None:
        await hub.start_session(session, principal)
        return
    await hub.start_session(session, None)  # welcome (its userId is the connection's)
    try:
        await hub.authenticate_session(session, principal, since=since, epoch=epoch)
    except Forbidden as exc:  # as Hub.start_session does for a handshake token
        session.send_error(exc.code, exc.message)
        session.close(CloseCode.POLICY_VIOLATION, "too many connections for this user")
    except BackendUnavailable as exc:
        session.log.warning("closing: cannot authenticate now: %s", exc)
        session.close(CloseCode.TRY_AGAIN_LATER, "service temporarily unavailable")
    except Exception:
        session.log.exception("closing: resuming the user's stream failed")
        session.close(CloseCode.INTERNAL_ERROR, "internal error")


async def _watch_disconnect(receive: Receive, conn: SSEConnection) -> None:
    """Wait for the client to go away; then stop the stream without a close event."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.abort()
            return


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body; None when it passes ``limit`` bytes (or the client went away)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    allow: bytes | None = None,
) -> None:
    body = orjson.dumps({"status": "accepted"} if status == 202 else {"error": message})
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    if allow is not None:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _preflight(send: Send, cors: list[tuple[bytes, bytes]]) -> None:
    """CORS preflight of a cross-origin POST (its ``X-Wshub-Session`` header needs one)."""
    headers = [
        *cors,
        (b"access-control-allow-methods", b"GET, POST"),
        (b"access-control-allow-headers", b"content-type, authorization, " + b"x-wshub-session"),
        (b"access-control-max-age", b"600"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
