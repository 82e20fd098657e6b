"""TypeScript types of the hub's protocol, derived from the same Pydantic models as the AsyncAPI
document: every message the server sends (``SERVER_MESSAGES`` and the application's
``hub.describe``) and every message the router accepts (the built-in types and the application's
``@hub.on``), as one payload type per message, a map per direction (``ServerMessages``,
``ClientMessages``: type string → payload) and a discriminated union per direction keyed by
``type`` (``ServerMessage``, ``ClientMessage``), so a ``switch (msg.type)`` narrows the payload.

The output is one self-contained module (no imports) that compiles with ``tsc --strict``; the
``@wshub/client`` package is generic over the two maps (``clients/js``, docs/browser.md).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .core.hub import Hub
from .protocol import MAX_ID_LENGTH, SERVER_MESSAGES

__all__ = ["typescript"]

_REF = "#/$defs/{model}"
_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
#: Names the generated module declares itself; a model with one of them is renamed.
_RESERVED = frozenset(
    {"Json", "ServerMessages", "ClientMessages", "ServerMessage", "ClientMessage"}
    | {"ServerMessageType", "ClientMessageType", "ServerEnvelope", "ClientEnvelope"}
    | {"string", "number", "boolean", "object", "unknown", "never", "any", "null", "undefined"}
)


def _identifier(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_$]", "_", name) or "T"
    if not _IDENT.match(base):
        base = f"T{base}"
    candidate, n = base, 1
    while candidate in taken or candidate in _RESERVED:
        n += 1
        candidate = f"{base}{n}"
    taken.add(candidate)
    return candidate


def _key(name: str) -> str:
    return name if _IDENT.match(name) else json.dumps(name)


def _literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    lines = text.strip().replace("*/", "*\\/").splitlines()
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}".rstrip() for line in lines), f"{indent} */"]


class _Emitter:
    """JSON schema (as Pydantic writes it) → TypeScript type expressions."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names  # $defs key -> TypeScript identifier

    def type(self, schema: Any, indent: str = "") -> str:
        if schema is True or schema == {}:
            return "unknown"
        if schema is False:
            return "never"
        if not isinstance(schema, dict):
            return "unknown"
        if "$ref" in schema:
            return self.names[schema["$ref"].rsplit("/", 1)[-1]]
        if "const" in schema:
            return _literal(schema["const"])
        if "enum" in schema:
            return " | ".join(_literal(v) for v in schema["enum"]) or "never"
        for union in ("anyOf", "oneOf"):
            if union in schema:
                return self._join([self.type(s, indent) for s in schema[union]], " | ")
        if "allOf" in schema:
            return self._join([self.type(s, indent) for s in schema["allOf"]], " & ")
        kind = schema.get("type")
        if isinstance(kind, list):
            return self._join([self.type({**schema, "type": k}, indent) for k in kind], " | ")
        if kind in ("integer", "number"):
            return "number"
        if kind in ("string", "boolean", "null"):
            return str(kind)
        if kind == "array":
            return self._array(schema, indent)
        if kind == "object" or "properties" in schema:
            return self._object(schema, indent)
        return "unknown"

    @staticmethod
    def _join(parts: list[str], sep: str) -> str:
        unique = list(dict.fromkeys(parts))
        if len(unique) == 1:
            return unique[0]
        return sep.join(f"({p})" if (" | " in p or " & " in p) else p for p in unique)

    def _array(self, schema: dict[str, Any], indent: str) -> str:
        if "prefixItems" in schema:
            items = [self.type(s, indent) for s in schema["prefixItems"]]
            rest = schema.get("items")
            if rest not in (None, False):
                items.append(f"...{self._element(self.type(rest, indent))}[]")
            return f"[{', '.join(items)}]"
        return f"{self._element(self.type(schema.get('items', True), indent))}[]"

    @staticmethod
    def _element(t: str) -> str:
        return t if _IDENT.match(t) else f"Array<{t}>"

    def members(self, schema: dict[str, Any], indent: str) -> list[str]:
        """The lines inside ``{ }`` of an object schema, at ``indent``."""
        required = set(schema.get("required", ()))
        lines: list[str] = []
        for name, prop in schema.get("properties", {}).items():
            lines += _comment(prop.get("description") if isinstance(prop, dict) else None, indent)
            optional = "" if name in required else "?"
            lines.append(f"{indent}{_key(name)}{optional}: {self.type(prop, indent)};")
        extra = schema.get("additionalProperties")
        if extra is True or (extra is None and "properties" not in schema):
            lines.append(f"{indent}[key: string]: unknown;")
        elif isinstance(extra, dict):
            lines.append(f"{indent}[key: string]: {self.type(extra, indent)};")
        return lines

    def _object(self, schema: dict[str, Any], indent: str) -> str:
        lines = self.members(schema, indent + "  ")
        if not lines:
            return "Record<string, never>"
        return "{\n" + "\n".join(lines) + f"\n{indent}}}"


def _messages(hub: Hub) -> tuple[dict[str, tuple[type[BaseModel], str]], ...]:
    client = {route.type: (route.model, route.summary) for route in hub.router}
    server = {**SERVER_MESSAGES, **hub.server_messages}
    return client, server


def typescript(hub: Hub) -> str:
    """The TypeScript module of ``hub``'s protocol (built-in and application types)."""
    client, server = _messages(hub)
    models = list(dict.fromkeys(m for m, _ in (*client.values(), *server.values())))
    refs, document = models_json_schema(
        [(m, "validation") for m in models], ref_template=_REF, by_alias=True
    )
    defs: dict[str, Any] = document.get("$defs", {})
    taken: set[str] = set()
    names = {key: _identifier(key, taken) for key in defs}
    emit = _Emitter(names)
    model_type = {m: emit.type(refs[(m, "validation")]) for m in models}

    out = [
        "// Generated by `wshub codegen ts`: the wshub protocol's messages as TypeScript types.",
        "// Do not edit; run the command again when the hub's message types change.",
        "/* eslint-disable */",
        "",
        "/** Any JSON value. */",
        "export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };",
        "",
    ]
    for key, schema in defs.items():
        name = names[key]
        out += _comment(schema.get("description") if isinstance(schema, dict) else None, "")
        is_object = (
            isinstance(schema, dict)
            and schema.get("type") == "object"
            and not any(k in schema for k in ("anyOf", "oneOf", "allOf", "$ref", "enum"))
        )
        if is_object:
            members = emit.members(schema, "  ")
            if not members:
                out.append(f"export type {name} = Record<string, never>;")
            else:
                out += [f"export interface {name} {{", *members, "}"]
        else:
            out.append(f"export type {name} = {emit.type(schema)};")
        out.append("")

    def table(title: str, doc: str, messages: dict[str, tuple[type[BaseModel], str]]) -> None:
        out.extend(_comment(doc, ""))
        out.append(f"export interface {title} {{")
        for type_, (model, summary) in messages.items():
            out.extend(_comment(summary, "  "))
            out.append(f"  {_key(type_)}: {model_type[model]};")
        out.extend(["}", ""])

    table("ServerMessages", "Server → client: message type → payload.", server)
    table("ClientMessages", "Client → server: message type → payload.", client)
    out += [
        "export type ServerMessageType = keyof ServerMessages;",
        "export type ClientMessageType = keyof ClientMessages;",
        "",
        "/** A server → client envelope of one type (`offset`: position in the user stream). */",
        "export interface ServerEnvelope<T extends ServerMessageType = ServerMessageType> {",
        "  type: T;",
        "  payload: ServerMessages[T];",
        "  /** The id of the request this answers. */",
        "  id?: string;",
        "  /** Position in the user's own stream. */",
        "  offset?: number;",
        "}",
        "",
        "/** A client → server envelope of one type (a missing payload means `{}`). */",
        "export interface ClientEnvelope<T extends ClientMessageType = ClientMessageType> {",
        "  type: T;",
        "  payload?: ClientMessages[T];",
        f"  /** At most {MAX_ID_LENGTH} characters; every direct reply carries it. */",
        "  id?: string;",
        "}",
        "",
        "/** Every server → client message: `switch (msg.type)` narrows `msg.payload`. */",
        *_union("ServerMessage", "ServerEnvelope", server),
        "",
        "/** Every client → server message: `switch (msg.type)` narrows `msg.payload`. */",
        *_union("ClientMessage", "ClientEnvelope", client),
        "",
    ]
    return "\n".join(out)


def _union(name: str, envelope: str, types: dict[str, Any]) -> list[str]:
    members = [f"  | {envelope}<{_literal(t)}>" for t in types]
    if not members:
        return [f"export type {name} = never;"]
    members[-1] += ";"
    return [f"export type {name} =", *members]
