"""A throwaway PostgreSQL database for tests: ``wshub_test_<random>``, created on the machine's
PostgreSQL (``WSHUB_TEST_POSTGRES``, default ``postgresql://postgres@127.0.0.1:5432/postgres``)
for the session and dropped after it. No other database is ever touched.

Tests that need PostgreSQL are skipped with a clear reason when it does not answer, unless
``WSHUB_REQUIRE_POSTGRES=1`` or ``CI=true``: then they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = ["PostgresDatabase", "fresh_postgres", "postgres_database"]

ADMIN_URL = os.environ.get("WSHUB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _run(statement: str) -> None:
    """Run an admin statement on a loop of its own thread (fixtures may run inside a loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(_admin(statement))).result()


def _required() -> bool:
    return os.environ.get("WSHUB_REQUIRE_POSTGRES") == "1" or os.environ.get("CI") == "true"


async def _admin(statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class PostgresDatabase:
    """A database of this test session alone. ``url(prefix)``: a URL naming it (``prefix``: the
    schema wshub uses); ``reset()`` drops every schema wshub created in it."""

    def __init__(self) -> None:
        self.name = f"wshub_test_{uuid.uuid4().hex[:12]}"
        parts = urlsplit(ADMIN_URL)
        self.base = urlunsplit(parts._replace(path="/" + self.name, query=""))

    def url(self, prefix: str | None = None) -> str:
        return self.base + (f"?prefix={prefix}" if prefix else "")

    def create(self) -> None:
        _run(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        _run(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def execute(self, statement: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.base, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def fetch(self, query: str, *args: object) -> list[object]:
        import asyncpg

        conn = await asyncpg.connect(self.base, timeout=5)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresDatabase]:
    """The session's throwaway database (created on first use, dropped at the end)."""
    try:
        import asyncpg  # noqa: F401
    except ModuleNotFoundError:
        reason = "asyncpg is not installed (pip install 'wshub[postgres]')"
        if _required():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    db = PostgresDatabase()
    try:
        db.create()
    except Exception as exc:  # refused, no such role, ...
        reason = f"PostgreSQL at {ADMIN_URL} is not usable: {exc}"
        if _required():
            pytest.fail(reason + "; WSHUB_REQUIRE_POSTGRES=1 / CI=true requires it", pytrace=False)
        pytest.skip(reason)
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def fresh_postgres(request: pytest.FixtureRequest) -> object:
    """``get()`` returns a URL with a schema of this test alone (``?prefix=t_<random>``):
    requested lazily, so the runs of other engines need no PostgreSQL."""

    def get() -> str:
        db: PostgresDatabase = request.getfixturevalue("postgres_database")
        return db.url(f"t_{uuid.uuid4().hex[:12]}")

    return get
