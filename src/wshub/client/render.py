"""Showing frames in a terminal: one line each, coloured by type (rich), errors in red; or, when
stdout is not a terminal, each received frame's JSON text as it came, one per line."""

from __future__ import annotations

import sys
from typing import TextIO

import orjson
from rich.console import Console
from rich.json import JSON as RichJSON
from rich.text import Text

__all__ = ["FramePrinter", "style_for"]

_TOKEN_SHOWN = 12  # characters of a token left visible on screen

_STYLES = {
    "welcome": "bold cyan",
    "authenticated": "cyan",
    "pong": "bright_black",
    "message": "green",
    "subscribed": "dark_green",
    "unsubscribed": "dark_green",
    "published": "dark_green",
    "chat": "bold magenta",
    "chat_received": "magenta",
    "notification": "bold yellow",
    "system_message": "bold blue",
    "presence": "blue",
    "presence_join": "blue",
    "presence_leave": "blue",
    "error": "bold red",
}


def style_for(type_: str | None) -> str:
    """The colour of a frame type (application types: white)."""
    return _STYLES.get(type_ or "", "white")


class FramePrinter:
    """Prints frames for ``wshub client``.

    ``plain``: received frames go to ``out`` exactly as received, one per line, and nothing else
    does (for pipes and ``jq``); notes and errors go to stderr. Otherwise frames are shown with
    ``<`` (received) and ``>`` (sent, dimmed), labelled and coloured by type.
    """

    def __init__(self, *, plain: bool, out: TextIO | None = None, err: TextIO | None = None):
        self.plain = plain
        self._out = out or sys.stdout
        self._console = Console(file=self._out, highlight=False, soft_wrap=True)
        self._err = Console(file=err or sys.stderr, highlight=False, soft_wrap=True)

    def received(self, raw: str) -> None:
        if self.plain:
            self._out.write(raw + "\n")
            self._out.flush()
            return
        self._console.print(self._line("<", raw, dim=False))

    def sent(self, raw: str) -> None:
        if not self.plain:
            self._console.print(self._line(">", _redact(raw), dim=True))

    def note(self, text: str, style: str = "yellow") -> None:
        """A message from the tool itself (connection state, hints)."""
        self._err.print(Text(text, style=style))

    def error(self, text: str) -> None:
        self._err.print(Text(text, style="bold red"))

    def _line(self, arrow: str, raw: str, *, dim: bool) -> Text:
        type_: str | None = None
        body: Text
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = Text(raw)
        else:
            if isinstance(obj, dict) and isinstance(obj.get("type"), str):
                type_ = obj["type"]
            body = RichJSON(raw, indent=None).text
        style = "bright_black" if dim else style_for(type_)
        label = Text(f"{arrow} {type_ or '?':<14} ", style=style)
        if dim:
            body.stylize("bright_black")
        elif type_ == "error":
            body.stylize("red")
        return Text.assemble(label, body)


def _redact(raw: str) -> str:
    """Shorten the token of an outgoing ``authenticate`` so it does not end up on screen."""
    if '"authenticate"' not in raw:
        return raw
    try:
        obj = orjson.loads(raw)
        token = obj["payload"]["token"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw
    if isinstance(token, str) and len(token) > _TOKEN_SHOWN:
        obj["payload"]["token"] = token[:_TOKEN_SHOWN] + "…"
        return orjson.dumps(obj).decode()
    return raw
