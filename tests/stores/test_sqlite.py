"""What only the SQLite store promises: durability across reopen, crash and file loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from wshub.errors import BackendUnavailable
from wshub.interfaces import Retention
from wshub.stores.sqlite import SQLiteStore, path_from_url, synchronous_from_url

KEEP = Retention(size=None, ttl=None)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///./wshub.db", "./wshub.db"),
        ("sqlite:///data/x.db", "data/x.db"),
        ("sqlite:////var/lib/wshub/x.db", "/var/lib/wshub/x.db"),
    ],
)
def test_path_from_url(url: str, path: str) -> None:
    assert path_from_url(url) == path


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "redis://x"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        path_from_url(url)


@pytest.mark.parametrize(
    ("url", "level"),
    [
        ("sqlite:///./wshub.db", "full"),
        ("sqlite:///./wshub.db?synchronous=NORMAL", "normal"),
        ("sqlite:///./wshub.db?synchronous=full", "full"),
    ],
)
def test_synchronous_from_url(url: str, level: str) -> None:
    assert synchronous_from_url(url) == level
    assert path_from_url(url) == "./wshub.db"


@pytest.mark.parametrize(
    "url", ["sqlite:///x.db?synchronous=off", "sqlite:///x.db?sync=normal", "sqlite:///x.db?a"]
)
def test_unknown_sqlite_options_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        synchronous_from_url(url)


@pytest.mark.parametrize(("level", "pragma"), [("full", 2), ("normal", 1)])
async def test_the_synchronous_level_is_applied(tmp_path: Path, level: str, pragma: int) -> None:
    store = SQLiteStore(tmp_path / "a.db", synchronous=level)
    await store.start()
    try:
        assert await store._submit(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == (
            pragma
        )
    finally:
        await store.close()


async def test_everything_survives_a_reopen_with_the_same_epoch(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    store = SQLiteStore(path)
    await store.start()
    first = await store.append("s", b"one", KEEP)
    await store.append("s", b"two", KEEP)
    await store.advance_cursor("s", 1)
    await store.close()

    store = SQLiteStore(path)
    await store.start()
    messages, pos = await store.read("s", 0)
    assert [m.data for m in messages] == [b"one", b"two"]
    assert pos.offset == 2 and pos.epoch == first.epoch
    assert await store.cursor("s") == 1
    assert (await store.append("s", b"three", KEEP)).offset == 3
    await store.close()


async def test_a_new_database_file_means_a_new_epoch(tmp_path: Path) -> None:
    epochs = []
    for name in ("a.db", "b.db"):
        store = SQLiteStore(tmp_path / name)
        await store.start()
        epochs.append((await store.append("s", b"x", KEEP)).epoch)
        await store.close()
    assert epochs[0] != epochs[1]


async def test_sweep_deletes_expired_rows(tmp_path: Path) -> None:
    now = [1000.0]
    store = SQLiteStore(tmp_path / "a.db", clock=lambda: now[0])
    await store.start()
    await store.append("s", b"x", Retention(size=None, ttl=10))
    await store.append("s", b"y", Retention(size=None, ttl=100))
    now[0] += 50
    assert await store.sweep() == 1
    assert [m.data for m in (await store.read("s", 0))[0]] == [b"y"]
    await store.close()


async def test_an_unusable_path_fails_start_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SQLiteStore(tmp_path / "file" / "x.db")
    with pytest.raises(OSError):
        await store.start()
    with pytest.raises(BackendUnavailable):
        await store.append("s", b"x", KEEP)
