"""One fixture, parametrized over every Store implementation, real engines only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from wshub.interfaces import Store
from wshub.stores.memory import MemoryStore
from wshub.stores.sqlite import SQLiteStore


class Clock:
    """A settable wall clock, injected into stores to test retention by age."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[[Clock], Store]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    def make(clock: Clock) -> Store:
        if request.param == "memory":
            return MemoryStore(clock=clock)
        return SQLiteStore(tmp_path / "store.db", clock=clock)

    return make


@pytest.fixture
async def store(store_factory: StoreFactory, clock: Clock) -> AsyncIterator[Store]:
    s = store_factory(clock)
    await s.start()
    try:
        yield s
    finally:
        await s.close()
