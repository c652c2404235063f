"""Erasure and access (DESIGN.md guarantee 4): `DELETE /v1/devices/{id}` empties the gateway and,
through a signed `forget` on `down/cmd` over a real Mosquitto, the device; the export tells
everything the gateway holds."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import AgentSettings, load_settings
from agent.link.commands import Commands
from agent.runtime.agent import Agent
from agent.runtime.metrics import Metrics
from agent.store.core import NewSignal
from agent.store.core import Store as AgentStore
from cloud_gateway.api.schemas import DeviceErased, DeviceExport
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.claims import init_stock
from cloud_gateway.db.commands import (
    DATA_TABLES,
    HANDLED_ELSEWHERE,
    PERIODIC_SENDS_MAX,
    confirm_commands,
    erase_device,
    mark_commands_sent,
    outstanding_commands,
)
from cloud_gateway.db.devices import export_device
from cloud_gateway.db.ingest import store_batch
from cloud_gateway.db.store import Store
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import Batch, Command
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer, Verifier
from simulators.brokers import MosquittoProcess
from tests.support.builders import make_batch
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

ALL = {"analytics": True, "personalization": True, "marketing": True}


# ---------------------------------------------------------------- gateway store, no network


def _batch(device_id: str, seq: int) -> Batch:
    return make_batch(device_id, seq, 1, [("c1", "o1", "click")], features=[0.5, 1.0])


def _claim_and_grant(store: Store, device_id: str) -> None:
    now = format_time(utcnow())
    init_stock(store, "c1", [("o1", 5)])
    store.conn.execute(
        "INSERT INTO claims (device_id, id, offer_id, campaign_id, at, received_at, granted)"
        " VALUES (?, ?, 'o1', 'c1', ?, ?, 1)",
        [device_id, f"cl-{device_id}", now, now],
    )
    store.conn.execute("UPDATE offer_stock SET stock = stock - 1")
    store.conn.execute(
        "INSERT INTO grants (campaign_id, offer_id, device_id, claim_id, code, at)"
        " VALUES ('c1', 'o1', ?, ?, 'CODE1', ?)",
        [device_id, f"cl-{device_id}", now],
    )


def test_every_device_keyed_table_is_erased_or_handled(tmp_path: Path) -> None:
    """A migration that adds a table with a device_id must decide what erasure does with it."""
    store = Store(tmp_path / "gw.sqlite3")
    keyed = {
        name
        for (name,) in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if any(col[1] == "device_id" for col in store.conn.execute(f"PRAGMA table_info({name})"))
    }
    assert keyed == set(DATA_TABLES) | set(HANDLED_ELSEWHERE)


def test_export_holds_everything_and_erasure_removes_it_keeping_stock(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.db")
    store_batch(store, "tv-erase-1", _batch("tv-erase-1", 1), utcnow())
    store_batch(store, "tv-keep-01", _batch("tv-keep-01", 1), utcnow())
    _claim_and_grant(store, "tv-erase-1")

    export = export_device(store, "tv-erase-1")
    assert export is not None
    assert export["registry"]["device_id"] == "tv-erase-1"
    assert export["registry"]["signals_stored"] == 1
    assert [f["features"] for f in export["outcome_features"]] == [[0.5, 1.0]]
    assert [c["id"] for c in export["claims"]] == ["cl-tv-erase-1"]
    assert [g["code"] for g in export["grants"]] == ["CODE1"]
    assert len(export["signals"]) == len(export["outcomes"]) == 1
    DeviceExport.model_validate(export)  # what /openapi.json promises

    command = {"id": "cmd-1", "kind": "forget", "expires_at": format_time(utcnow())}
    removed = erase_device(store, "tv-erase-1", command, "token:t", utcnow())
    assert removed is not None
    assert removed["signals"] == removed["outcomes"] == removed["outcome_features"] == 1
    assert removed["batches"] == removed["claims"] == removed["registry"] == 1
    assert removed["grants_anonymized"] == 1
    assert export_device(store, "tv-erase-1") is None
    for table in ("signals", "outcomes", "outcome_features", "batches", "claims", "grants"):
        rows = store.conn.execute(
            f"SELECT count(*) FROM {table} WHERE device_id = ?",
            ["tv-erase-1"],
        ).fetchone()
        assert rows[0] == 0, table
    # the coupon stays consumed: initial - stock still equals the grants
    stock = store.conn.execute("SELECT initial - stock FROM offer_stock").fetchone()[0]
    assert stock == store.conn.execute("SELECT count(*) FROM grants").fetchone()[0] == 1
    # the other device is untouched; the erasure is audited
    kept = export_device(store, "tv-keep-01")
    assert kept is not None and kept["signals"]
    audit = audit_log(
        store,
    )
    assert audit[0]["action"] == "device.erase" and audit[0]["target"] == "tv-erase-1"
    assert json.loads(audit[0]["detail"])["command_id"] == "cmd-1"
    # a second erasure of nothing: nothing to do
    assert erase_device(store, "tv-erase-1", {**command, "id": "cmd-2"}, "t", utcnow()) is None

    # periodic re-sends stop after PERIODIC_SENDS_MAX; a birth still gets the command
    later = utcnow() + timedelta(hours=1)
    for _ in range(PERIODIC_SENDS_MAX):
        assert [c["id"] for c in outstanding_commands(store, None, later)] == ["cmd-1"]
        mark_commands_sent(store, ["cmd-1"], utcnow())
    assert outstanding_commands(store, None, later) == []
    assert [c["id"] for c in outstanding_commands(store, "tv-erase-1")] == ["cmd-1"]

    # a batch sent before the device forgot arrives late: the confirmation sweeps it too
    store_batch(store, "tv-erase-1", _batch("tv-erase-1", 2), utcnow())
    done = confirm_commands(store, "tv-erase-1", ["cmd-1", "other"], utcnow())
    assert done["confirmed"] == 1 and done["swept"] >= 2
    erased = export_device(store, "tv-erase-1")
    assert erased is not None and erased["signals"] == []
    store.close()


# ---------------------------------------------------------------- agent commands, no network


async def test_agent_obeys_only_signed_fresh_commands_for_itself_once(tmp_path: Path) -> None:
    signer, stranger = Signer.generate("k1"), Signer.generate("k1")
    store = AgentStore(tmp_path / "agent.sqlite3")
    await store.open()
    metrics = Metrics()
    forgotten: list[dict[str, int]] = []

    async def on_forget(removed: dict[str, int]) -> None:
        forgotten.append(removed)

    commands = Commands(
        "tv-cmd-0001",
        store,
        Verifier.from_public_keys([signer.public]),
        metrics,
        on_forget=on_forget,
    )

    async def add_signal() -> None:
        row = NewSignal(new_id(), "app_open", format_time(utcnow()), "{}", 50, 2e9)
        await store.call(store.outbox.accept, [row], [("app_open", 1, 1)])

    def command(device: str = "tv-cmd-0001", *, expires_in: float = 3600, **kw: Any) -> bytes:
        now = utcnow()
        body = Command(
            id=kw.pop("id", new_id()),
            device_id=device,
            kind=kw.pop("kind", "forget"),
            issued_at=now,
            expires_at=now + timedelta(seconds=expires_in),
        ).to_wire()
        return codec.encode_dict(kw.pop("by", signer).sign(body))

    await add_signal()
    unsigned = json.dumps({**json.loads(command()), "sig": None}).encode()
    for bad in (
        unsigned,
        command(by=stranger),
        command(expires_in=-1),
        command("tv-someone-else"),
        b"{not json",
    ):
        assert not await commands.handle(bad)
    assert metrics.counters["commands_bad"] == 5
    assert store.counters.signal_rows == 1 and not forgotten

    forget = command(id="forget-1")
    assert await commands.handle(forget)
    assert store.counters.signal_rows == 0 and store.depth == 0
    assert forgotten[0]["signals"] == 1 and forgotten[0]["feature_buckets"] == 1
    assert store.drops["forgotten"] == 1 and store.drops["forgets"] == 1

    await add_signal()  # consent and life go on; a re-sent forget is confirmed, not re-applied
    assert await commands.handle(forget)
    assert store.counters.signal_rows == 1 and len(forgotten) == 1
    assert metrics.counters["commands_duplicate"] == 1
    await store.close()
    db = sqlite3.connect(tmp_path / "agent.sqlite3")
    assert db.execute("SELECT id FROM receipts").fetchall() == [("forget-1",)]
    db.close()


# ---------------------------------------------------------------- end to end, real broker


def _agent_settings(
    tmp_path: Path, broker: MosquittoProcess, gw: Gateway, device: str
) -> AgentSettings:
    return load_settings(
        profile="tv",
        device_id=device,
        broker=broker.url,
        data_dir=tmp_path / "dev",
        api_port=None,
        trust=gw.trust_path,
        overrides={
            "uplink": {"batch_max_age_s": 0.05, "ack_timeout_s": 5.0, "mode": "raw"},
            "topic_root": gw.settings.topic_root,
        },
        environ={},
    )


@pytest.mark.integration
async def test_erasure_end_to_end_through_mosquitto(
    tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    tag = uuid.uuid4().hex[:8]
    device = f"tv-erase-{tag}"
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db, resend_after_s=600)
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        agent_settings = _agent_settings(tmp_path, mosquitto, gw, device)
        async with Agent(agent_settings) as agent:
            assert await agent.wait_connected()
            await agent.set_consent(ALL)
            await agent.accept_signals(
                [{"kind": "content_view", "attrs": {"genre": "drama"}} for _ in range(5)]
            )
            assert await agent.drain(10)
        # the device is offline now: its forget waits for it (broker session, then birth)
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            export = await (await http.get(f"/v1/devices/{device}/export")).json()
            assert len(export["signals"]) == 5 and export["registry"]["profile"] == "tv"
            async with http.delete(f"/v1/devices/{device}") as r:
                assert r.status == 202, await r.text()
                erased = await r.json()
            DeviceErased.model_validate(erased)
            assert erased["removed"]["signals"] == 5 and erased["removed"]["registry"] == 1
            async with http.get(f"/v1/devices/{device}/export") as r:
                assert r.status == 404
            async with http.delete("/v1/devices/tv-never-seen") as r:
                assert r.status == 404
            async with http.delete(f"/v1/devices/{device}", headers={"Authorization": "x"}) as r:
                assert r.status == 401
            doc = await (await http.get("/openapi.json")).json()
            assert "202" in doc["paths"]["/v1/devices/{id}"]["delete"]["responses"]

            async with Agent(agent_settings) as agent:

                async def confirmed() -> bool:
                    rows = await gw.db.call(
                        lambda s: s.rows(
                            "SELECT receipt_at FROM device_commands WHERE id = ?",
                            [erased["command_id"]],
                        )
                    )
                    return bool(rows and rows[0]["receipt_at"])

                await eventually(confirmed, timeout=15.0)
                assert agent.counters["forgets"] == 1
                assert agent.store.depth == 0
                assert agent.consent.analytics  # consent stays as the user set it
                assert gw.counters["device_commands_resent_on_birth"] >= 1
                assert gw.counters["device_commands_confirmed"] == 1
                export = await (await http.get(f"/v1/devices/{device}/export")).json()
                assert export["signals"] == [] and export["claims"] == []

                # life goes on after erasure: new data flows again
                await agent.accept_signals([{"kind": "app_open", "attrs": {"app": "x"}}])
                assert await agent.drain(10)
                export = await (await http.get(f"/v1/devices/{device}/export")).json()
                assert len(export["signals"]) == 1
    db = sqlite3.connect(tmp_path / "dev" / "agent.sqlite3")
    for table in ("exposures", "cap_counts", "batches"):
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    db.close()
