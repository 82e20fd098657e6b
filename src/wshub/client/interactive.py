"""``wshub client``: a terminal client in the spirit of wscat, on the SDK.

A line that is not a shortcut is sent as it is (JSON or not: the server's answer to garbage is
worth seeing). Shortcuts go through the SDK, so ``/sub`` subscriptions and ``/auth`` survive
reconnects. In a pipe (stdin not a terminal) lines are sent in order, received frames are
printed as plain JSON lines, and the tool exits ``--wait`` seconds after the last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import threading
from dataclasses import dataclass

import orjson

from ..types import JSON
from .backoff import ReconnectPolicy
from .client import Client
from .errors import AuthenticationError, ClientError, ServerError
from .models import ConnectionState, StateChange
from .render import FramePrinter

__all__ = ["HELP", "Command", "parse_line", "run_client"]

HELP = """\
/sub CHANNEL            subscribe (resumed after reconnects)
/unsub CHANNEL          unsubscribe
/pub CHANNEL DATA       publish DATA (JSON, or else sent as a string)
/chat USER TEXT...      direct message
/ping                   ping (the reply is pong)
/auth TOKEN             authenticate this connection
/presence CHANNEL       who is in a presence-… channel
/help                   this text
/quit                   close with 1000 and exit
anything else           sent as it is, e.g. {"type":"ping","id":"1"}"""

#: Each shortcut and its arguments; the last one of two takes the rest of the line.
_USAGE = {
    "sub": ("CHANNEL",),
    "unsub": ("CHANNEL",),
    "pub": ("CHANNEL", "DATA"),
    "chat": ("USER", "TEXT"),
    "ping": (),
    "auth": ("TOKEN",),
    "presence": ("CHANNEL",),
    "help": (),
    "quit": (),
}
_ALIASES = {"exit": "quit", "subscribe": "sub", "unsubscribe": "unsub", "publish": "pub"}


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed input line: ``name`` is a shortcut, ``"raw"`` (send ``args[0]`` as is),
    ``"empty"``, or ``"invalid"`` (``args[0]`` says why)."""

    name: str
    args: tuple[str, ...] = ()


def parse_line(line: str) -> Command:
    """Parse one input line. Pure."""
    text = line.strip()
    if not text:
        return Command("empty")
    if not text.startswith("/"):
        return Command("raw", (text,))
    head, _, rest = text[1:].partition(" ")
    name = _ALIASES.get(head, head)
    params = _USAGE.get(name)
    if params is None:
        return Command("invalid", (f"unknown command /{head} (try /help)",))
    rest = rest.strip()
    if len(params) == 2:
        first, _, tail = rest.partition(" ")
        args: tuple[str, ...] = (first, tail.strip())
    else:
        args = tuple(rest.split())
    if len(args) != len(params) or not all(args):
        return Command("invalid", (f"usage: /{name} {' '.join(params)}".rstrip(),))
    return Command(name, args)


def _data(text: str) -> JSON:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class _Session:
    """One run of the tool: the client, the printer, and what each command does."""

    def __init__(self, client: Client, printer: FramePrinter) -> None:
        self.client = client
        self.printer = printer

    async def execute(self, cmd: Command) -> bool:
        """Run one command; False means quit."""
        c = self.client
        name, args = cmd.name, cmd.args
        try:
            if name == "quit":
                return False
            if name == "empty":
                pass
            elif name == "invalid":
                self.printer.error(args[0])
            elif name == "help":
                self.printer.note(HELP, style="bright_black")
            elif name == "raw":
                await c.send_raw(args[0])
            elif name == "sub":
                await c.subscribe(args[0], _ignore)
            elif name == "unsub":
                await c.unsubscribe(args[0])
            elif name == "pub":
                await c.publish(args[0], _data(args[1]))
            elif name == "chat":
                await c.chat(args[0], args[1])
            elif name == "ping":
                await c.ping()
            elif name == "auth":
                await c.authenticate(args[0])
            elif name == "presence":
                await c.presence(args[0])
        except ServerError:
            pass  # the error frame has been printed already, in red
        except (ClientError, ValueError) as exc:
            self.printer.error(f"{type(exc).__name__}: {exc}")
        return True


class _AttemptOutcomes(logging.Handler):
    """What became of each reconnect attempt: the SDK logs why one failed ("reconnect attempt
    %d failed: %r" on ``wshub.client``); the tool reports it when the next one is scheduled, so
    each attempt is reported with its own outcome, not the close that started reconnecting."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.failed: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if not (isinstance(record.msg, str) and record.msg.startswith("reconnect attempt")):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        if not args or not isinstance(args[0], int):
            return
        exc = args[1] if len(args) > 1 else (record.exc_info[1] if record.exc_info else None)
        self.failed[args[0]] = describe_failure(exc)


def describe_failure(exc: object) -> str:
    """One short phrase for why a connection attempt failed."""
    if exc is None:
        return "failed"
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return f"refused with HTTP {status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        if exc.errno:
            return os.strerror(exc.errno).lower()
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ignore(_: object) -> None:
    """Subscriptions of the tool print frames as they arrive; the SDK's copy is not needed."""


def _start_input_thread(queue: asyncio.Queue[str | None], interactive: bool) -> None:
    """Read stdin in a daemon thread (so a pending read never blocks exit); None marks EOF."""
    loop = asyncio.get_running_loop()

    def read() -> None:
        try:
            if interactive:
                while True:
                    loop.call_soon_threadsafe(queue.put_nowait, input())
            else:
                for line in sys.stdin:
                    loop.call_soon_threadsafe(queue.put_nowait, line)
        except (EOFError, KeyboardInterrupt, OSError, ValueError):
            pass
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="wshub-client-stdin", daemon=True).start()


async def run_client(
    url: str,
    *,
    token: str | None,
    token_in_url: bool = False,
    wait: float = 1.0,
    interactive: bool | None = None,
    plain: bool | None = None,
    reconnect: bool | None = None,
    timeout: float = 10.0,
    policy: ReconnectPolicy | None = None,
) -> int:
    """Run the tool until ``/quit``, end of input (plus ``wait`` seconds when piped) or a close
    the client does not recover from. Returns the exit status."""
    if interactive is None:
        interactive = sys.stdin.isatty()
    if plain is None:
        plain = not sys.stdout.isatty()
    if reconnect is None:
        reconnect = interactive
    printer = FramePrinter(plain=plain)

    reconnecting = False
    outcomes = _AttemptOutcomes()

    def on_state(change: StateChange) -> None:
        nonlocal reconnecting
        if change.state is ConnectionState.RECONNECTING:
            reconnecting = True
            retry = f"reconnecting in {change.delay:.1f}s (attempt {change.attempt})"
            if change.attempt <= 1:
                closed = f"{change.code} {change.reason}".strip()
                printer.note(f"connection closed ({closed}); {retry}")
            else:
                previous = change.attempt - 1
                why = outcomes.failed.pop(previous, "failed")
                printer.note(f"attempt {previous}: {why}; {retry}")
        elif change.state is ConnectionState.CONNECTED and reconnecting:
            reconnecting = False
            outcomes.failed.clear()
            printer.note(f"reconnected to {url}; subscriptions resumed", style="green")

    client = Client(
        url,
        token=token,
        token_in_url=token_in_url,
        reconnect=(policy or ReconnectPolicy()) if reconnect else False,
        request_timeout=timeout,
        open_timeout=timeout,
        on_frame=printer.received,
        on_send=printer.sent,
        on_state=on_state if interactive else None,
    )
    try:
        await client.connect()
    except AuthenticationError as exc:
        printer.error(f"authentication failed: {exc.message}")
        return 1
    except Exception as exc:  # refused, unreachable, bad URL: all end the same way
        printer.error(f"cannot connect to {url}: {exc}")
        return 1
    if interactive:
        with contextlib.suppress(ImportError):  # not on Windows
            import readline  # noqa: F401  (input() gets line editing and history)
        printer.note("connected; /help for shortcuts, /quit or Ctrl-D to leave", "bright_black")

    sdk_log = logging.getLogger("wshub.client")
    sdk_level = sdk_log.level
    if interactive:
        sdk_log.addHandler(outcomes)
        if not sdk_log.isEnabledFor(logging.INFO):
            sdk_log.setLevel(logging.INFO)
    try:
        return await _run(client, printer, interactive, wait)
    finally:
        sdk_log.removeHandler(outcomes)
        sdk_log.setLevel(sdk_level)


async def _run(client: Client, printer: FramePrinter, interactive: bool, wait: float) -> int:
    session = _Session(client, printer)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    _start_input_thread(lines, interactive)
    closed = asyncio.ensure_future(client.wait_closed())
    status = 0
    try:
        while True:
            next_line = asyncio.ensure_future(lines.get())
            await asyncio.wait({next_line, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not next_line.done():
                next_line.cancel()
                error = client.error
                if error is None or str(error).startswith("closed by the server"):
                    closed_by = f"{client.close_code} {client.close_reason}".strip()
                    printer.error(f"connection closed ({closed_by})")
                else:  # reconnecting gave up, or an attempt was refused for good
                    printer.error(f"stopped reconnecting: {str(error) or type(error).__name__}")
                status = 1
                break
            line = next_line.result()
            if line is None:  # end of input
                if not interactive and wait > 0:
                    await asyncio.wait({closed}, timeout=wait)
                break
            if not await session.execute(parse_line(line)):
                break
    finally:
        closed.cancel()
        await client.close()
    return status
