"""``wshub client`` (an interactive terminal client) and ``wshub smoke`` (a pass/fail run of the
everyday scenarios against a running server)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register the client-side subcommands on the ``wshub`` parser."""
    client = sub.add_parser(
        "client",
        help="interactive WebSocket client (like wscat) with wshub shortcuts",
        description="Send lines to a wshub server and print what it sends back. A JSON line is "
        "sent as it is; /help lists shortcuts (/sub, /pub, /chat, /ping, /auth ...). In a pipe "
        "it sends stdin's lines, prints replies as JSON lines and exits.",
    )
    client.add_argument("url", help="e.g. ws://localhost:5000/ws")
    who = client.add_mutually_exclusive_group()
    who.add_argument("--token", help="authenticate with this token")
    who.add_argument("--user", help="mint a token for this user id with WS_JWT_SECRET")
    client.add_argument(
        "--channels", help="with --user: private channels to grant, comma-separated"
    )
    client.add_argument(
        "--token-in-url", action="store_true", help="send the token as ?token= in the handshake"
    )
    client.add_argument(
        "--wait",
        type=float,
        default=1.0,
        help="in a pipe: seconds to keep printing replies after the last line (default 1)",
    )
    client.add_argument("--timeout", type=float, default=10.0, help="request timeout, seconds")
    client.add_argument(
        "--no-reconnect", action="store_true", help="exit instead of reconnecting (interactive)"
    )
    client.set_defaults(func=_cmd_client)

    smoke = sub.add_parser(
        "smoke",
        help="check a running server: connect, auth, chat, pub/sub, HTTP API (pass/fail)",
        description="Connect, ping, authenticate, chat (online and offline), publish/subscribe, "
        "notify and broadcast over the HTTP API, and error cases, with fresh random users; "
        "print a pass/fail table. Exit status 1 if any check fails.",
    )
    smoke.add_argument("url", help="e.g. ws://localhost:5000/ws")
    smoke.add_argument("--secret", help="JWT secret to mint tokens (default: WS_JWT_SECRET)")
    smoke.add_argument("--algorithm", help="JWT algorithm (default: from WS_JWT_ALGORITHMS)")
    smoke.add_argument("--api-key", dest="api_key", help="HTTP API key (default: WS_API_KEY)")
    smoke.add_argument(
        "--clients", type=int, default=0, help="also check fan-out to N subscribed connections"
    )
    smoke.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    smoke.add_argument(
        "--no-broadcast", action="store_true", help="skip the broadcast (it reaches everyone)"
    )
    smoke.set_defaults(func=_cmd_smoke)


def _settings() -> Any:
    from ..config import load_settings

    return load_settings(server=False)


def _hmac_algorithm(algorithms: list[str]) -> str:
    return next((a for a in algorithms if a.startswith("HS")), "HS256")


def _cmd_client(args: argparse.Namespace) -> int:
    from ..extras import require

    require("rich", "cli", needed_by="wshub client")
    from .interactive import run_client

    token: str | None = args.token
    if args.user is not None:
        settings = _settings()
        if settings.jwt_secret is None:
            print("wshub client: --user needs WS_JWT_SECRET (environment or .env)", file=sys.stderr)
            return 2
        from ..auth.jwt import issue_token

        token = issue_token(
            args.user,
            settings.jwt_secret.get_secret_value(),
            algorithm=_hmac_algorithm(settings.jwt_algorithms),
            channels=[c for c in (args.channels or "").split(",") if c],
        )
    interactive = sys.stdin.isatty()
    return asyncio.run(
        run_client(
            args.url,
            token=token,
            token_in_url=args.token_in_url,
            wait=args.wait,
            interactive=interactive,
            reconnect=interactive and not args.no_reconnect,
            timeout=args.timeout,
        )
    )


def _cmd_smoke(args: argparse.Namespace) -> int:
    from ..extras import require

    for module in ("httpx", "rich"):
        require(module, "cli", needed_by="wshub smoke")
    from rich.console import Console

    from .smoke import SmokeTest, render

    secret, api_key, algorithm = args.secret, args.api_key, args.algorithm
    if secret is None or api_key is None or algorithm is None:
        settings = _settings()
        if secret is None and settings.jwt_secret is not None:
            secret = settings.jwt_secret.get_secret_value()
        if api_key is None and settings.api_key is not None:
            api_key = settings.api_key.get_secret_value()
        algorithm = algorithm or _hmac_algorithm(settings.jwt_algorithms)
    console = Console(no_color="NO_COLOR" in os.environ or None)
    smoke = SmokeTest(
        args.url,
        secret=secret,
        algorithm=algorithm,
        api_key=api_key,
        clients=max(0, args.clients),
        timeout=args.timeout,
        broadcast=not args.no_broadcast,
        console=console,
    )
    started = time.perf_counter()
    results = asyncio.run(smoke.run())
    console.print(render(results, args.url, time.perf_counter() - started))
    return 1 if any(r.status == "fail" for r in results) else 0
