"""A store file SQLite cannot read, on open: garbage, a truncated database, a damaged page.
Refused with a clear message, moved aside (with its WAL) for a post-mortem, a fresh store
started, the replacement counted in status and persisted; the agent takes signals again. A
healthy store is opened as it is (its rows kept)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.local_device import running_device

GOOD = {"kind": "search", "attrs": {"query_len": 3}}


async def make_store_with_rows(tmp_path: Path, n: int = 200) -> Path:
    async with running_device(tmp_path) as device:
        for _ in range(n // 50):
            await device.agent.accept_signals([GOOD] * 50)
        assert device.agent.store.depth == n
        return device.agent.settings.db_path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def scribble(path: Path) -> None:
    """Zeros over the middle of the file: the pages of the outbox's b-trees."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = b"\xa5" * 8192
    path.write_bytes(bytes(data))


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not an sqlite database, it was a cloned config file\n" * 100)


@pytest.mark.parametrize("damage", [garbage, truncate, scribble], ids=lambda f: f.__name__)
async def test_an_unreadable_store_is_moved_aside_and_a_fresh_one_starts(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    db_path = await make_store_with_rows(tmp_path)
    damage(db_path)  # type: ignore[operator]
    with caplog.at_level(logging.ERROR, logger="agent.store.core"):
        async with running_device(tmp_path) as device:
            agent = device.agent
            status = agent.status()
            replaced = status["store"]["replaced"]
            assert replaced is not None and replaced["moved_to"].startswith(
                "agent.sqlite3.corrupt-"
            )
            assert (db_path.parent / replaced["moved_to"]).is_file()
            assert agent.store.depth == 0  # a fresh store
            assert agent.counters["stores_replaced"] == 1
            assert (await agent.accept_signals([GOOD])) and agent.store.depth == 1
            assert (await agent.readiness())["store"] is True
    assert any("moved aside" in r.getMessage() for r in caplog.records)
    # reported after a restart too (persisted in the fresh store)
    async with running_device(tmp_path) as device:
        assert device.agent.status()["store"]["replaced"]["reason"] == replaced["reason"]
        assert device.agent.store.depth == 1
        assert device.agent.counters["stores_replaced"] == 0  # this start replaced nothing


async def test_a_healthy_store_is_opened_as_it_is(tmp_path: Path) -> None:
    await make_store_with_rows(tmp_path, 100)
    async with running_device(tmp_path) as device:
        assert device.agent.store.depth == 100
        assert device.agent.status()["store"]["replaced"] is None
    assert not list((tmp_path / "data").glob("*.corrupt-*"))
