"""The agent end to end against a real Mosquitto, a fake gateway client, real SQLite and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.errors import InvalidInput, UnknownOffer
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import State
from protocol.signing import Signer
from simulators.brokers import MosquittoProcess
from tests.support.agent_world import FakeGateway, World, eventually, http
from tests.support.builders import ALL
from tests.support.clock import FakeClock

pytestmark = pytest.mark.integration


def db_rows(world: World, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(world.data / "agent.sqlite3")) as db:
        return db.execute(sql).fetchall()


async def test_signals_are_committed_before_202(world: World) -> None:
    async with Agent(world.settings()) as agent:
        status, body = await http(
            agent,
            "POST",
            "/v1/signals",
            json={"signals": [{"kind": "app_open", "attrs": {"app": "tv", "category": "games"}}]},
        )
        assert status == 202
        assert body["accepted"] == 1
        # Read the SQLite file directly, right after the 202: the row is there.
        stored = db_rows(world, "SELECT id, kind FROM signals")
        assert stored == [(body["ids"][0], "app_open")]
        status, state = await http(agent, "GET", "/v1/status")
        assert state["outbox_depth"] == 1
        assert state["device_id"] == world.device


async def test_bad_requests_are_refused_and_nothing_is_stored(world: World) -> None:
    limits = {"max_request_bytes": 8192, "max_request_items": 100}
    async with Agent(world.settings(limits)) as agent:
        items = [{"kind": "app_open"}, {"kind": "Not A Kind!"}, {"kind": "search", "attrs": []}]
        status, body = await http(agent, "POST", "/v1/signals", json={"signals": items})
        assert status == 400
        locs = {e["loc"] for e in body["errors"]}
        assert "signals.1.kind" in locs
        assert "signals.2.attrs" in locs
        json_type = {"Content-Type": "application/json"}
        status, _ = await http(agent, "POST", "/v1/signals", data=b"{not json", headers=json_type)
        assert status == 400
        too_many = {"signals": [{"kind": "app_open"}] * 101}
        status, _ = await http(agent, "POST", "/v1/signals", json=too_many)
        assert status == 413
        huge = {"signals": [{"kind": "search", "attrs": {"q": "x" * 200}}] * 50}
        status, _ = await http(agent, "POST", "/v1/signals", json=huge)
        assert status == 413
        status, _ = await http(agent, "GET", "/v1/offers?surface=nowhere")
        assert status == 400
        with pytest.raises(InvalidInput) as caught:
            await agent.accept_signals([{"kind": "ok"}, {"kind": 3}])
        assert caught.value.errors[0]["loc"] == "signals.1.kind"
        assert db_rows(world, "SELECT COUNT(*) FROM signals") == [(0,)]
        assert agent.counters["api_rejected"] == 5
        status, _ = await http(agent, "GET", "/healthz")
        assert status == 200


async def test_batches_carry_persisted_seq_and_rows_leave_only_on_ack(
    world: World, gateway: FakeGateway
) -> None:
    gateway.auto_ack = False
    async with Agent(world.settings()) as agent:
        await agent.set_consent(ALL)
        ids = await agent.accept_signals([{"kind": "purchase", "attrs": {"amount": 3}}] * 3)
        await eventually(lambda: len(gateway.batches) == 1)
        first = gateway.batches[0]
        assert [s.id for s in first.signals] == ids
        # Published but not acknowledged: the rows are still on the device.
        assert db_rows(world, "SELECT COUNT(*) FROM signals") == [(3,)]
        assert not await agent.drain(timeout=0.2)
        await gateway.ack(first.seq)
        assert await agent.drain(timeout=5)
        assert db_rows(world, "SELECT COUNT(*) FROM signals") == [(0,)]
        assert agent.counters["signals_acked"] == 3
        gateway.auto_ack = True
        await agent.accept_signals([{"kind": "search"}])
        assert await agent.drain(timeout=5)
    async with Agent(world.settings()) as agent:
        await agent.accept_signals([{"kind": "search"}])
        assert await agent.drain(timeout=5)
    seqs = gateway.seqs()
    assert len(seqs) == 3
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3  # never reused, also across the restart


async def test_unacked_batch_is_resent_with_the_same_seq_and_content(
    world: World, gateway: FakeGateway
) -> None:
    gateway.auto_ack = False
    async with Agent(world.settings(ack_timeout_s=0.3)) as agent:
        await agent.set_consent(ALL)
        await agent.accept_signals([{"kind": "app_open", "attrs": {"category": "games"}}])
        await eventually(lambda: len(gateway.batches) >= 2)
        assert gateway.batches[0].seq == gateway.batches[1].seq
        assert gateway.raw[0] == gateway.raw[1]
        # counted once the resend's PUBACK is in and it is marked sent: after the gateway saw it
        await eventually(lambda: agent.counters["batches_resent"] >= 1)
        await gateway.ack(gateway.batches[0].seq)
        assert await agent.drain(timeout=5)


async def test_unacked_batch_survives_restart_and_is_resent(
    world: World, gateway: FakeGateway
) -> None:
    gateway.auto_ack = False
    async with Agent(world.settings()) as agent:
        await agent.set_consent(ALL)
        await agent.accept_signals([{"kind": "search", "attrs": {"query_len": 4}}])
        await eventually(lambda: len(gateway.batches) == 1)
    seq = gateway.batches[0].seq
    gateway.auto_ack = True
    async with Agent(world.settings()) as agent:
        assert await agent.drain(timeout=5)
    assert [b.seq for b in gateway.batches] == [seq] * len(gateway.batches)
    assert len(gateway.batches) >= 2


async def test_without_analytics_consent_nothing_is_published(
    world: World, gateway: FakeGateway
) -> None:
    clock = FakeClock()
    async with Agent(world.settings(), clock=clock, timer=clock) as agent:
        assert await agent.wait_connected()
        status, _ = await http(
            agent,
            "PUT",
            "/v1/consent",
            json={"purposes": {"analytics": False, "personalization": True, "marketing": True}},
        )
        assert status == 200
        await agent.accept_signals([{"kind": "app_open"}] * 5)
        clock.advance(60.0)  # far past `batch_max_age_s`: with consent, these would go up now
        await agent.uplink.step()
        assert agent.counters.get("batches_sent", 0) == 0
        assert gateway.batches == []
        assert agent.status()["outbox_depth"] == 5
        status, body = await http(
            agent, "PUT", "/v1/consent", json={"purposes": {**ALL, "extra": True}}
        )
        assert status == 400
        status, body = await http(agent, "PUT", "/v1/consent", json={"purposes": ALL})
        assert body["purposes"] == ALL
        assert body["version"] == 2
        assert await agent.drain(timeout=5)
        assert sum(len(b.signals) for b in gateway.batches) == 5


async def test_signed_bundle_is_verified_ranked_and_receipted(
    world: World, gateway: FakeGateway
) -> None:
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await agent.accept_signals(
            [{"kind": "consumable_level", "attrs": {"category": "purifier_filter", "level": 0.1}}]
        )
        cohort = world.bundle(["o-1", "o-2"], cohort="profile:tv")
        await gateway.publish("cohort/profile:tv/offers", cohort, retain=True)
        device = world.bundle(["o-3"])
        await gateway.publish(f"dev/{world.device}/down/offers", device)
        await eventually(lambda: agent.counters["bundles_verified"] == 2)
        assert agent.counters["offers_verified"] == 3
        status, body = await http(agent, "GET", "/v1/offers?surface=tv_home_banner&limit=5")
        assert status == 200
        assert {o["id"] for o in body["offers"]} == {"o-1", "o-2", "o-3"}
        assert all(isinstance(o["score"], float) and "reasons" in o for o in body["offers"])
        ranked = await agent.rank(surface="tv_home_banner", limit=1)
        assert len(ranked) == 1
        status, _ = await http(
            agent,
            "POST",
            "/v1/outcomes",
            json={"offer_id": ranked[0].offer.id, "kind": "click", "surface": "tv_home_banner"},
        )
        assert status == 202
        with pytest.raises(UnknownOffer):
            await agent.record_outcome("o-404", "click", "tv_home_banner")
        status, _ = await http(
            agent,
            "POST",
            "/v1/outcomes",
            json={"offer_id": "o-404", "kind": "click", "surface": "tv_home_banner"},
        )
        assert status == 404
        assert await agent.drain(timeout=5)
        # A newer cohort catalog replaces the old one entirely.
        await gateway.publish(
            "cohort/profile:tv/offers", world.bundle(["o-9"], cohort="profile:tv"), retain=True
        )
        await eventually(lambda: agent.counters["bundles_verified"] == 3)
        ids = {r.offer.id for r in await agent.rank(surface="tv_home_banner", limit=10)}
        assert ids == {"o-9", "o-3"}
        assert gateway.client is not None
        await gateway.client.publish(
            f"{world.root}/cohort/profile:tv/offers", b"", qos=1, retain=True
        )
    receipts = [r for b in gateway.batches for r in b.receipts]
    assert device["id"] in receipts
    outcomes = [o for b in gateway.batches for o in b.outcomes]
    assert len(outcomes) == 1
    assert outcomes[0].campaign_id == f"c-{ranked[0].offer.id}"
    assert outcomes[0].score == pytest.approx(ranked[0].score)
    assert outcomes[0].model_version == agent.model_version


async def test_bad_bundles_are_refused_counted_and_the_agent_keeps_going(
    world: World, gateway: FakeGateway
) -> None:
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        topic = f"dev/{world.device}/down/offers"
        tampered = world.bundle(["t-1", "t-2"])
        tampered["offers"][0]["discount"] = 0.99
        unsigned = world.bundle(["u-1"])
        del unsigned["sig"]
        expired = world.bundle(["e-1"], expires_in=timedelta(seconds=-5))
        wrong_key = world.bundle(["w-1"], signer=Signer.generate("k1"))
        unknown_kid = world.bundle(["k-1"], signer=Signer.generate("k9"))
        for bad in (tampered, unsigned, expired, wrong_key, unknown_kid):
            await gateway.publish(topic, bad)
        assert gateway.client is not None
        await gateway.client.publish(f"{world.root}/{topic}", b"\x00garbage", qos=1)
        # Replay: an older cohort catalog published again after a newer one.
        old = world.bundle(["r-1"], cohort="profile:tv")
        await gateway.publish("cohort/profile:tv/offers", old)
        await eventually(lambda: agent.counters["bundles_verified"] == 1)
        await gateway.publish(
            "cohort/profile:tv/offers", world.bundle(["r-2"], cohort="profile:tv")
        )
        await eventually(lambda: agent.counters["bundles_verified"] == 2)
        await gateway.publish("cohort/profile:tv/offers", old)
        await eventually(lambda: agent.counters["bundles_rejected"] == 7)
        assert agent.counters["offers_rejected"] == 2 + 1 + 1 + 1 + 1 + 1 + 1
        ids = [r.offer.id for r in await agent.rank(surface="tv_home_banner", limit=10)]
        assert ids == ["r-2"]
        status, _ = await http(agent, "GET", "/healthz")
        assert status == 200
        status, text = await http(agent, "GET", "/metrics")
        assert "edgemart_agent_bundles_rejected_total 7.0" in text


async def test_birth_will_and_persistent_session(world: World, gateway: FakeGateway) -> None:
    states: list[State] = []

    async def watch(ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", world.broker.port) as client:
            await client.subscribe(f"{world.root}/dev/{world.device}/state", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                states.append(codec.decode(message.payload, State))

    ready = asyncio.Event()
    watcher = asyncio.create_task(watch(ready))
    await ready.wait()
    try:
        async with Agent(world.settings()) as agent:
            await eventually(lambda: any(s.status == "online" for s in states))
            birth = states[-1]
            assert birth.profile == "tv"
            assert birth.model_version == agent.model_version
            assert "profile:tv" in birth.cohorts
        await eventually(lambda: states[-1].status == "offline")
        # While the device is away, a device bundle is queued in its persistent session.
        bundle = world.bundle(["away-1"])
        await gateway.publish(f"dev/{world.device}/down/offers", bundle)
        async with Agent(world.settings()) as agent:
            await eventually(lambda: agent.counters["bundles_verified"] == 1)
            assert agent.offers is not None
            assert agent.offers.get("away-1") is not None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    # A retained state is what a late subscriber sees.
    late: list[State] = []
    async with aiomqtt.Client("127.0.0.1", world.broker.port) as client:
        await client.subscribe(f"{world.root}/dev/{world.device}/state", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                late.append(codec.decode(message.payload, State))
                break
    assert late[0].status == "offline"


async def test_link_reconnects_after_broker_restart(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    world = World(tmp_path, own_mosquitto)
    gw = FakeGateway(world)
    async with Agent(world.settings()) as agent:
        await agent.set_consent(ALL)
        await eventually(lambda: agent.status()["link"] == "connected")
        own_mosquitto.kill()
        await eventually(lambda: agent.status()["link"] != "connected")
        await agent.accept_signals([{"kind": "search"}])
        own_mosquitto.start()
        ready = asyncio.Event()
        task = asyncio.create_task(gw.run(ready))
        await asyncio.wait_for(ready.wait(), 5)
        try:
            await eventually(lambda: agent.status()["link"] == "connected", timeout=10)
            assert await agent.drain(timeout=10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert agent.counters["link_connects"] >= 2
