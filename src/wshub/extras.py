"""Optional dependencies: ``pip install wshub`` is what mounting the hub into an app needs;
``wshub[server]``, ``[redis]``, ``[postgres]`` and ``[cli]`` add the rest (``[all]``: every one).
Code that needs an extra calls :func:`require` before importing it, so a missing one is a
:class:`MissingExtra` naming the extra instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError

__all__ = ["MissingExtra", "require"]


class MissingExtra(ConfigError):
    """An optional library that a setting or a command needs is not installed."""


def require(
    module: str, extra: str, setting: str | None = None, *, needed_by: str | None = None
) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra`: ``"{setting}: {needed_by} needs the
    {extra} extra: pip install 'wshub[{extra}]'"``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != module.partition(".")[0]:
            raise  # the module is there; something it imports is broken: not ours to hide
        what = needed_by or module
        prefix = f"{setting}: " if setting else ""
        raise MissingExtra(
            f"{prefix}{what} needs the {extra} extra: pip install 'wshub[{extra}]'"
        ) from None
