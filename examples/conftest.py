"""What an app's own conftest.py sets before its tests import the app (and its hub): a known
JWT secret and the memory store, so importing ``examples.fastapi_app`` touches no file.

The ``wshub`` pytest plugin is loaded by pytest itself once wshub is installed; this file only
overrides its ``wshub_hub`` fixture so that ``wshub_server`` runs the app's hub."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wshub import Hub

os.environ.setdefault("WS_JWT_SECRET", "example-app-test-secret-" + "0123456789abcdef" * 3)
os.environ.setdefault("WS_STORE_URL", "memory://")


@pytest.fixture
def wshub_hub() -> Hub:
    """``wshub_server`` serves the app's own hub, with its handlers (``typing``) and settings."""
    from examples.fastapi_app import hub

    return hub
