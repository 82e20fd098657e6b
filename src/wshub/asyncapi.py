"""An AsyncAPI 3 document of the hub's protocol, derived from the code: the router's message
types with their Pydantic payload models (built-in and the application's own), and the types
the server sends."""

from __future__ import annotations

import html
from typing import Any

import orjson
from pydantic import BaseModel

from .core.hub import Hub
from .protocol import MAX_ID_LENGTH, SERVER_MESSAGES

__all__ = ["asyncapi_document", "asyncapi_html"]

_REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema, with nested definitions hoisted into components."""
    schema = model.model_json_schema(ref_template=_REF, by_alias=True)
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault(model.__name__, schema)
    return {"$ref": _REF.format(model=model.__name__)}


def _envelope(type_: str, payload_ref: dict[str, Any], *, client: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "type": {"const": type_},
        "payload": payload_ref,
    }
    if client:
        properties["id"] = {"type": "string", "maxLength": MAX_ID_LENGTH}
    else:
        properties["id"] = {"type": "string", "description": "echo of the request's id"}
        properties["offset"] = {"type": "integer", "description": "position in the user stream"}
    return {"type": "object", "required": ["type"], "properties": properties}


def asyncapi_document(hub: Hub, *, host: str | None = None) -> dict[str, Any]:
    settings = hub.settings
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    channel_messages: dict[str, Any] = {}

    def add(name: str, type_: str, model: type[BaseModel], summary: str, *, client: bool) -> None:
        messages[name] = {
            "name": type_,
            "title": type_,
            "summary": summary,
            "contentType": "application/json",
            "payload": _envelope(type_, _schema(model, schemas), client=client),
        }
        channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        operations[f"{'receive' if client else 'send'}_{type_}"] = {
            "action": "receive" if client else "send",
            "channel": {"$ref": "#/channels/hub"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/hub/messages/{name}"}],
        }

    for route in hub.router:
        summary = route.summary + (" Requires authentication." if route.requires_auth else "")
        add(f"client.{route.type}", route.type, route.model, summary.strip(), client=True)
    for type_, (model, summary) in {**SERVER_MESSAGES, **hub.server_messages}.items():
        add(f"server.{type_}", type_, model, summary, client=False)

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "wshub",
            "version": "1",
            "description": (
                "Plain WebSocket + JSON. Every message is one text frame holding "
                '{"type", "payload", "id"?}. Operations are from the server\'s side: '
                "`receive` = client to server, `send` = server to client."
            ),
        },
        "servers": {
            "hub": {
                "host": host or f"{settings.host}:{settings.port}",
                "protocol": "wss" if settings.tls_cert else "ws",
                "pathname": settings.path,
            }
        },
        "defaultContentType": "application/json",
        "channels": {
            "hub": {
                "address": settings.path,
                "servers": [{"$ref": "#/servers/hub"}],
                "messages": channel_messages,
            }
        },
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def asyncapi_html(document: dict[str, Any]) -> str:
    """A readable, self-contained page of the document (no external scripts)."""
    rows = []
    components = document["components"]
    for name, message in components["messages"].items():
        direction = "client → server" if name.startswith("client.") else "server → client"
        payload_ref = message["payload"]["properties"]["payload"]["$ref"].rsplit("/", 1)[-1]
        schema = orjson.dumps(components["schemas"][payload_ref], option=orjson.OPT_INDENT_2)
        rows.append(
            f"<section><h3><code>{html.escape(message['name'])}</code> "
            f"<small>{direction}</small></h3><p>{html.escape(message['summary'])}</p>"
            f"<details><summary>payload schema ({html.escape(payload_ref)})</summary>"
            f"<pre>{html.escape(schema.decode())}</pre></details></section>"
        )
    info = document["info"]
    server = document["servers"]["hub"]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>wshub protocol (AsyncAPI)</title><style>"
        "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "section{border-top:1px solid #ddd;padding:.5rem 0}small{color:#666;font-weight:normal}"
        "pre{background:#f6f8fa;padding:.75rem;overflow:auto}</style></head><body>"
        f"<h1>{html.escape(info['title'])} protocol v{html.escape(info['version'])}</h1>"
        f"<p>{html.escape(info['description'])}</p>"
        f"<p>Endpoint: <code>{html.escape(server['protocol'])}://{html.escape(server['host'])}"
        f"{html.escape(server['pathname'])}</code> · "
        "<a href='/asyncapi.json'>AsyncAPI 3 JSON</a></p>" + "".join(rows) + "</body></html>"
    )
