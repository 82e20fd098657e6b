"""The ``wshub`` command: ``serve``, ``token`` and the tools built on the client SDK."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .config import Settings, load_settings
from .errors import BackendUnavailable, ConfigError
from .extras import MissingExtra, require

__all__ = ["main"]

#: What `wshub serve` imports beyond the bare install: the [server] extra.
SERVER_MODULES = ("uvicorn", "fastapi", "httptools", "prometheus_client")


def _load_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key in ("host", "port", "path", "store_url", "log_level")
        if (value := getattr(args, key, None)) is not None
    }
    return load_settings(**overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    for module in SERVER_MODULES:
        require(module, "server", needed_by="wshub serve")
    settings = _load_settings(args)
    _setup_logging(settings.log_level)
    log = logging.getLogger("wshub")
    if settings.api_key is None:
        log.warning("WS_API_KEY is not set: the HTTP API answers 401")
    from .server.run import serve

    serve(settings)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    settings = load_settings(server=False)
    if settings.jwt_secret is None:
        print("wshub token: WS_JWT_SECRET is not set (environment or .env)", file=sys.stderr)
        return 2
    from .auth.jwt import issue_token

    algorithm = next((a for a in settings.jwt_algorithms if a.startswith("HS")), "HS256")
    channels = [c for c in (args.channels or "").split(",") if c]
    token = issue_token(
        args.user_id,
        settings.jwt_secret.get_secret_value(),
        algorithm=algorithm,
        ttl=args.ttl,
        channels=channels,
    )
    print(token)
    return 0


def _cmd_asyncapi(args: argparse.Namespace) -> int:
    """Print the AsyncAPI document; with --app, of the application's hub (its own types too)."""
    import importlib

    import orjson

    from .asyncapi import asyncapi_document
    from .core.hub import Hub
    from .factory import create_hub

    if args.app:
        module_name, _, attr = args.app.partition(":")
        sys.path.insert(0, os.getcwd())
        hub = getattr(importlib.import_module(module_name), attr or "hub")
        if not isinstance(hub, Hub):
            print(f"wshub asyncapi: {args.app} is not a wshub Hub", file=sys.stderr)
            return 2
    else:
        # The built-in types only: no store, no keys (authenticator=None: no warning about them).
        hub = create_hub(store_url="memory://", broker_url="memory://", authenticator=None)
    sys.stdout.write(orjson.dumps(asyncapi_document(hub), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    return 0


def _cmd_codegen(args: argparse.Namespace) -> int:
    """Write the TypeScript types of the protocol (with --app, the application's types too)."""
    import importlib

    from .codegen import typescript
    from .core.hub import Hub
    from .factory import create_hub

    if args.app:
        module_name, _, attr = args.app.partition(":")
        sys.path.insert(0, os.getcwd())
        hub = getattr(importlib.import_module(module_name), attr or "hub")
        if not isinstance(hub, Hub):
            print(f"wshub codegen: {args.app} is not a wshub Hub", file=sys.stderr)
            return 2
    else:
        hub = create_hub(store_url="memory://", broker_url="memory://", authenticator=None)
    source = typescript(hub)
    if args.output in (None, "-"):
        sys.stdout.write(source)
    else:
        with open(args.output, "w", encoding="utf-8", newline="\n") as file:
            file.write(source)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wshub", description="Real-time messaging hub")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the standalone server (settings: WS_* / .env)")
    serve.add_argument("--host", help="WS_HOST (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="WS_PORT (default 5000)")
    serve.add_argument("--path", help="WS_PATH (default /ws)")
    serve.add_argument("--store-url", dest="store_url", help="WS_STORE_URL")
    serve.add_argument("--log-level", dest="log_level", help="WS_LOG_LEVEL")
    serve.set_defaults(func=_cmd_serve)

    token = sub.add_parser("token", help="print a signed development token for a user")
    token.add_argument("user_id")
    token.add_argument("--channels", help="comma-separated private channels to grant")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    token.set_defaults(func=_cmd_token)

    asyncapi = sub.add_parser("asyncapi", help="print the AsyncAPI 3 document of the protocol")
    asyncapi.add_argument("--app", help="module:attribute of your hub (default: built-in types)")
    asyncapi.set_defaults(func=_cmd_asyncapi)

    codegen = sub.add_parser("codegen", help="write the protocol's message types for a client")
    codegen.add_argument("language", choices=["ts"], help="ts: TypeScript")
    codegen.add_argument("--app", help="module:attribute of your hub (default: built-in types)")
    codegen.add_argument("-o", "--output", help="file to write (default: standard output)")
    codegen.set_defaults(func=_cmd_codegen)

    from .client import cli as client_cli

    client_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # One line on stderr, never a traceback: 2 for configuration (a bad setting, a missing
    # extra), 1 for what start-up could not reach (a backend, the port).
    try:
        code: int = args.func(args)
    except MissingExtra as exc:
        print(f"wshub: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"wshub: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except BackendUnavailable as exc:
        print(f"wshub: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
