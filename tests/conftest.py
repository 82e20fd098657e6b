"""Shared fixtures: a real server on a free loopback port, and settings for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from wshub.config import Settings
from wshub.testing import TestServer, run_server

SECRET = "test-secret-" + "0123456789abcdef" * 4  # 75 bytes: long enough for HS512
API_KEY = "test-api-key"


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: no .env file, memory store, known secret and key."""
    base: dict[str, Any] = {
        "jwt_secret": SECRET,
        "api_key": API_KEY,
        "store_url": "memory://",
        "shutdown_timeout": 2000,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


ServerFactory = Callable[..., AbstractAsyncContextManager[TestServer]]


@pytest.fixture(params=["native", "asgi"])
def transport(request: pytest.FixtureRequest) -> str:
    """Server-level tests run on both endpoints: wshub's native protocol and plain ASGI."""
    param: str = request.param
    return param


@pytest.fixture
def server_factory(transport: str) -> ServerFactory:
    """``async with server_factory(rate_limit=5) as server: ...``"""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[TestServer]:
        overrides.setdefault("transport", transport)
        return run_server(make_settings(**overrides))

    return factory


@pytest.fixture
async def server(transport: str) -> AsyncIterator[TestServer]:
    async with run_server(make_settings(transport=transport)) as s:
        yield s
