"""Agent settings layering and the SQLite store (migrations, seq, quota, acks), no broker needed."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import firmware_profiles
from agent.config import load_settings
from agent.errors import ConfigError, QuotaExceeded
from agent.store.core import NewSignal, Store
from agent.store.schema import MIGRATIONS


def _settings(tmp_path: Path, **kwargs: Any) -> Any:
    args: dict[str, Any] = {
        "profile": "tv",
        "device_id": "tv-0001",
        "broker": "mqtt://127.0.0.1:1883",
        "data_dir": tmp_path,
        "trust": tmp_path / "trust.json",
        "environ": {},
    }
    args.update(kwargs)
    return load_settings(**args)


@pytest.mark.parametrize("name", firmware_profiles.available())
def test_every_shipped_profile_loads(tmp_path: Path, name: str) -> None:
    settings = _settings(tmp_path, profile=name)
    assert settings.profile.name == name
    assert settings.profile.surfaces
    assert settings.api_port is None


def test_layers_config_file_then_env_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[uplink]\nack_timeout_s = 3.0\nmax_in_flight = 2\n[agent]\ntopic_root = "x/v1"\n'
    )
    settings = _settings(
        tmp_path,
        config_file=config,
        environ={"EDGEMART_UPLINK__MAX_IN_FLIGHT": "7", "EDGEMART_BUDGETS__OUTBOX_FULL": "refuse"},
        overrides={"uplink": {"batch_max_age_s": 0.1}},
        api_port=0,
    )
    assert settings.profile.uplink.ack_timeout_s == 3.0
    assert settings.profile.uplink.max_in_flight == 7
    assert settings.profile.uplink.batch_max_age_s == 0.1
    assert settings.profile.budgets.outbox_full == "refuse"
    assert settings.topic_root == "x/v1"
    assert settings.broker_port == 1883
    assert settings.api_port == 0


def test_config_errors_name_the_field_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[budgets]\noutbox_full = "explode"\n')
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, config_file=config)
    assert "budgets.outbox_full" in str(caught.value)
    assert str(config) in str(caught.value)
    with pytest.raises(ConfigError, match="environment"):
        _settings(tmp_path, environ={"EDGEMART_SURPRISE": "1"})
    with pytest.raises(ConfigError, match=r"must divide a day.*uplink.aggregate_window_s"):
        _settings(tmp_path, overrides={"uplink": {"mode": "aggregate", "aggregate_window_s": 70}})
    with pytest.raises(ConfigError, match="unknown profile"):
        _settings(tmp_path, profile="toaster")
    with pytest.raises(ConfigError, match="broker"):
        _settings(tmp_path, broker="http://example")
    with pytest.raises(ConfigError, match="device_id"):
        _settings(tmp_path, device_id="Bad/Id")
    with pytest.raises(ConfigError, match=r"decisions\.min_score"):
        _settings(tmp_path, overrides={"decisions": {"min_score": 1.5}})
    assert _settings(tmp_path).profile.decisions.min_score is None  # shipped: no minimum


def test_a_value_from_a_flag_is_reported_as_the_flags(tmp_path: Path) -> None:
    """An argument (`--device-id`) is never blamed on the environment, even with variables set;
    a value the environment did set is blamed on it."""
    env = {"EDGEMART_UPLINK__MAX_IN_FLIGHT": "7"}
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, device_id="BAD_ID", environ=env)
    assert "in command line, field device_id" in str(caught.value)
    assert "environment" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, overrides={"topic_root": "a/#"}, environ=env)
    assert "in command line" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, environ={"EDGEMART_AGENT__TOPIC_ROOT": "a/#"})
    assert "in environment" in str(caught.value)


def _signal(n: int, priority: int = 50, attrs: str = "{}") -> NewSignal:
    return NewSignal(f"s-{n:05d}", "search", "2026-01-01T00:00:00.000Z", attrs, priority, 4e9)


def _build(
    seq: int, signals: list[dict[str, Any]], outcomes: list[Any], receipts: list[str], *_: Any
) -> bytes:
    return json.dumps({"seq": seq, "ids": [s["id"] for s in signals]}).encode()


async def test_store_migrations_seq_and_acks(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = Store(path)
    await store.open()
    await store.call(store.outbox.accept, [_signal(i) for i in range(5)], [("cat:games", 10, 1)])
    batch = await store.call(
        store.batches.cut,
        max_signals=3,
        max_outcomes=10,
        max_receipts=10,
        include_data=True,
        build=_build,
    )
    assert batch is not None
    assert json.loads(batch.payload) == {"seq": 1, "ids": ["s-00000", "s-00001", "s-00002"]}
    assert store.depth == 5
    result = await store.call(store.batches.ack, [1, 99])
    assert result.seqs == (1,)
    assert result.signals == 3
    assert store.depth == 2
    second = await store.call(
        store.batches.cut,
        max_signals=3,
        max_outcomes=10,
        max_receipts=10,
        include_data=True,
        build=_build,
    )
    assert second is not None
    assert second.seq == 2
    await store.close()
    # Reopen: the unacked batch is still there, and the next seq continues after it.
    store = Store(path)
    await store.open()
    assert [b.seq for b in await store.call(store.batches.stored)] == [2]
    assert await store.call(store.batches.next_seq) == 3
    assert store.depth == 2
    assert await store.call(store.buckets.load) == [("cat:games", 10, 1)]
    await store.close()
    with closing(sqlite3.connect(path)) as db:
        names = [r[0] for r in db.execute("SELECT name FROM migrations ORDER BY rowid")]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert names[:3] == ["m001_outbox", "m002_offers_consent", "m003_feature_buckets"]
    assert names == [name for name, _ in MIGRATIONS]  # every migration recorded, in order
    assert "issue3_outbox_quota" in names
    assert mode == "wal"


async def test_store_quota_evicts_lowest_priority_or_refuses(tmp_path: Path) -> None:
    big = json.dumps({"q": "x" * 900})
    store = Store(tmp_path / "e.sqlite3", outbox_max_bytes=5000)
    await store.open()
    await store.call(store.outbox.accept, [_signal(1, priority=90, attrs=big)], [])
    await store.call(store.outbox.accept, [_signal(2, priority=10, attrs=big)], [])
    await store.call(store.outbox.accept, [_signal(3, priority=50, attrs=big)], [])
    await store.call(store.outbox.accept, [_signal(4, priority=50, attrs=big)], [])
    done = await store.call(store.outbox.accept, [_signal(5, priority=50, attrs=big)], [])
    assert done.evicted == 1
    batch = await store.call(
        store.batches.cut,
        max_signals=10,
        max_outcomes=10,
        max_receipts=10,
        include_data=True,
        build=_build,
    )
    assert batch is not None
    assert "s-00002" not in json.loads(batch.payload)["ids"]  # the lowest priority went first
    await store.close()

    store = Store(tmp_path / "r.sqlite3", outbox_max_bytes=5000, outbox_full="refuse")
    await store.open()
    for i in range(4):
        await store.call(store.outbox.accept, [_signal(i, attrs=big)], [])
    with pytest.raises(QuotaExceeded):
        await store.call(store.outbox.accept, [_signal(9, attrs=big)], [("cat:x", 1, 1)])
    assert store.depth == 4
    assert await store.call(store.buckets.load) == []  # nothing of the refused call was stored
    await store.close()


def test_a_profile_that_does_not_ask_for_raw_signals_sends_aggregates(tmp_path: Path) -> None:
    custom = tmp_path / "fridge.toml"
    custom.write_text('name = "fridge"\nsurfaces = ["fridge_door"]\n')
    settings = _settings(tmp_path, profile=str(custom))
    assert settings.profile.uplink.mode == "aggregate"
    assert settings.profile.uplink.durability == "full"
    assert _settings(tmp_path, profile="tv").profile.uplink.mode == "raw"
