"""``wshub client`` and ``wshub smoke`` (placeholder until the client SDK lands)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register the client-side subcommands on the ``wshub`` parser."""
    _ = argparse
