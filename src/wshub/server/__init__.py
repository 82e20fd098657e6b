"""The standalone wshub server: the hub at ``WS_PATH`` plus the HTTP API, on one port."""

from .app import create_app

__all__ = ["create_app"]
