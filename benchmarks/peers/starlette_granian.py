"""Peer: the naive Starlette endpoint (`starlette_naive:app`, imported, not copied) served by
granian: ASGI interface, 1 worker, uvloop (the fastest of granian's loops here, PERF-NOTES).

granian runs a supervisor process and forks its worker from it (the runner counts the CPU and
RSS of both). granian's own SIGTERM handler stops its workers gracefully; this one kills the
worker and exits at once, as the other peers do.

    python starlette_granian.py PORT
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from _common import port_from_argv, quiet_sigterm
from granian.constants import Interfaces, Loops
from granian.server import Server


class QuietServer(Server):
    def signal_handler_interrupt(self, *_args: Any, **_kwargs: Any) -> None:
        for worker in self.wrks:
            worker.kill()
        os._exit(0)


if __name__ == "__main__":
    quiet_sigterm()  # mutes asyncio's logger; granian installs its own SIGTERM handler
    QuietServer(
        "starlette_naive:app",
        address="127.0.0.1",
        port=port_from_argv(),
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        backlog=4096,
        log_enabled=False,
        working_dir=Path(__file__).resolve().parent,
    ).serve()
