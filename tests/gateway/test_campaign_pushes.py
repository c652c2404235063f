"""What a campaign change owes devices, and that they get it: pushes owed by a change that a
crash cut short are made at the next start; a sold-out offer is re-announced; bundles are
refreshed at half their lifetime and re-planned when a device reports new facts; offer ids
are unique across campaigns. Real Mosquitto, gateway in this process."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from cloud_gateway.campaigns.model import Campaign, CampaignIn, transition
from cloud_gateway.campaigns.pending import Owed
from cloud_gateway.db.backend import Session
from cloud_gateway.db.campaigns import change_campaign, pending
from cloud_gateway.db.devices import get_device
from cloud_gateway.db.open import open_session
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import Batch, ClaimRequest, OfferBundle, Signal, State
from protocol.ids import format_time, new_id, parse_time, utcnow
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port
from tests.support import waiting
from tests.support.builders import CAMPAIGN_OFFER as OFFER
from tests.support.gateway_world import gateway_settings
from tests.support.processes import start_gateway, stop

LIMITED = {**OFFER, "limited": True}
# a gateway in this process, pushes through a real broker: up to 30 s under load
eventually = partial(waiting.eventually, timeout=30.0)


class Inbox:
    """Everything a test client receives, by topic."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.by_topic: dict[str, list[dict[str, Any]]] = {}
        self._task = asyncio.create_task(self._collect(), name="inbox")

    async def _collect(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            if message.payload:
                self.by_topic.setdefault(message.topic.value, []).append(
                    json.loads(message.payload)
                )

    def get(self, topic: str) -> list[dict[str, Any]]:
        return self.by_topic.get(topic, [])

    def close(self) -> None:
        self._task.cancel()


async def test_pushes_owed_by_a_change_cut_short_by_a_crash_are_made_at_start(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db, scheduler_tick_s=0.2)
    topics = settings.topics
    async with Gateway(settings) as gw:
        cohort = await gw.campaigns.create(
            CampaignIn.model_validate(
                {"name": "cohort", "cohorts": ["all"], "offers": [{**OFFER, "id": "c1"}]}
            ),
            "op",
        )
        device = await gw.campaigns.create(
            CampaignIn.model_validate(
                {
                    "name": "device",
                    "cohorts": ["all"],
                    "targeting": {"devices": ["tv-crash-1"]},
                    "offers": [{**OFFER, "id": "d1"}],
                }
            ),
            "op",
        )
        birth = State(device_id="tv-crash-1", status="online", profile="tv", cohorts=["all"])
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as dev:
            await dev.publish(topics.state("tv-crash-1"), codec.encode(birth), qos=1)
            await eventually(lambda: _registered(gw, "tv-crash-1"))
    # What `_change` commits before it pushes: the new states and the pushes they owe. The
    # process dies right after this commit (the gateway above is gone, nothing was pushed).
    store = open_session(settings.data_dir, settings.db)
    now = utcnow()
    for campaign, owed in (
        (cohort, Owed("catalog", cohort.id, ("all",))),
        (device, Owed("device_launch", device.id)),
    ):
        live = transition(campaign, "launch", now)
        change_campaign(
            store,
            live.doc(),
            who="op",
            action="campaign.launch",
            detail={"from": "draft", "to": "live"},
            at=now,
            owed=[owed],
        )
    assert len(pending(store)) == 2
    store.close()

    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        inbox = Inbox(client)
        await client.subscribe(topics.cohort_offers("all"), qos=1)
        await client.subscribe(topics.offers("tv-crash-1"), qos=1)
        try:
            async with Gateway(settings) as gw:

                async def announced() -> bool:
                    catalogs = inbox.get(topics.cohort_offers("all"))
                    bundles = inbox.get(topics.offers("tv-crash-1"))
                    return bool(catalogs and catalogs[-1]["offers"] and bundles)

                await eventually(announced)
                catalog = OfferBundle.model_validate(inbox.get(topics.cohort_offers("all"))[-1])
                assert [o.id for o in catalog.offers] == ["c1"]
                bundle = OfferBundle.model_validate(inbox.get(topics.offers("tv-crash-1"))[-1])
                assert [o.id for o in bundle.offers] == ["d1"]

                async def cleared() -> bool:
                    return not await gw.db.call(pending)

                await eventually(cleared)
        finally:
            inbox.close()


async def _registered(gw: Gateway, device_id: str) -> bool:
    return await gw.db.call(get_device, device_id) is not None


async def test_sold_out_offers_are_re_announced_and_offer_ids_are_unique(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db, scheduler_tick_s=0.2)
    topics = settings.topics
    async with (
        Gateway(settings) as gw,
        aiomqtt.Client("127.0.0.1", mosquitto.port) as client,
    ):
        inbox = Inbox(client)
        await client.subscribe(topics.cohort_offers("all"), qos=1)
        await client.subscribe(f"{topics.root}/dev/+/down/#", qos=1)
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        http = aiohttp.ClientSession(
            f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            for d in ("tv-so-1", "tv-so-2", "tv-so-3"):
                birth = State(device_id=d, status="online", profile="tv", cohorts=["all"])
                await client.publish(topics.state(d), codec.encode(birth), qos=1)
            cohort_spec = {
                "name": "two coupons",
                "cohorts": ["all"],
                "offers": [{**LIMITED, "id": "so-c", "stock": 2}],
            }
            resp = await http.post("/v1/campaigns", json=cohort_spec)
            assert resp.status == 201, await resp.text()
            cohort_id = (await resp.json())["id"]
            # The same offer id in another campaign: 409, naming the field.
            dup = await http.post("/v1/campaigns", json={**cohort_spec, "name": "again"})
            assert dup.status == 409
            assert dup.content_type == "application/problem+json"
            problem = await dup.json()
            assert problem["errors"][0]["loc"] == "offers" and "so-c" in problem["detail"]
            assert len(await gw.campaigns.list()) == 1  # nothing of it stored
            resp = await http.post(
                "/v1/campaigns",
                json={
                    "name": "one coupon, one device",
                    "cohorts": ["all"],
                    "targeting": {"devices": ["tv-so-3"]},
                    "offers": [{**LIMITED, "id": "so-d", "stock": 1}],
                },
            )
            device_id = (await resp.json())["id"]
            for cid in (cohort_id, device_id):
                assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200

            async def launched() -> bool:
                return bool(inbox.get(topics.offers("tv-so-3")))

            await eventually(launched)
            for d, offer, cid in (
                ("tv-so-1", "so-c", cohort_id),
                ("tv-so-2", "so-c", cohort_id),
                ("tv-so-3", "so-d", device_id),
            ):
                claim = ClaimRequest(
                    id=new_id(), device_id=d, offer_id=offer, campaign_id=cid, at=utcnow()
                )
                await client.publish(topics.claim_up(d), codec.encode(claim), qos=1)

            def stock_of(messages: list[dict[str, Any]], offer: str) -> int | None:
                for o in messages[-1]["offers"] if messages else []:
                    if o["id"] == offer:
                        return int(o["stock"])
                return None

            async def re_announced() -> bool:
                return (
                    stock_of(inbox.get(topics.cohort_offers("all")), "so-c") == 0
                    and stock_of(inbox.get(topics.offers("tv-so-3")), "so-d") == 0
                )

            await eventually(re_announced)  # devices hide limited offers with stock 0
            assert [r["granted"] for r in inbox.get(topics.claim_down("tv-so-3"))] == [True]

            async def settled() -> bool:  # the owed rows go once the broker acked the pushes
                return not await gw.db.call(pending)

            await eventually(settled)
        finally:
            inbox.close()
            await http.close()


async def test_bundles_are_refreshed_at_half_life_and_re_planned_on_new_facts(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db, scheduler_tick_s=0.2)
    topics = settings.topics
    device = "tv-facts-1"
    seq = 0

    async def report(level: float) -> None:
        nonlocal seq
        seq += 1
        reading = Signal(
            id=new_id(),
            kind="consumable_level",
            at=utcnow(),
            attrs={"category": "purifier_filter", "level": level},
        )
        batch = Batch(
            device_id=device, seq=seq, sent_at=utcnow(), agent_version="0", signals=[reading]
        )
        await client.publish(topics.batch(device), codec.encode(batch), qos=1)

    async with (
        Gateway(settings) as gw,
        aiomqtt.Client("127.0.0.1", mosquitto.port) as client,
    ):
        inbox = Inbox(client)
        await client.subscribe(topics.offers(device), qos=1)
        try:
            birth = State(device_id=device, status="online", profile="tv", cohorts=["all"])
            await client.publish(topics.state(device), codec.encode(birth), qos=1)
            await report(0.9)
            await eventually(lambda: _stored(gw, 1))
            campaign = await gw.campaigns.create(
                CampaignIn.model_validate(
                    {
                        "name": "filter low",
                        "cohorts": ["all"],
                        "targeting": {
                            "rules": [
                                {
                                    "kind": "consumable_below",
                                    "category": "purifier_filter",
                                    "level": 0.3,
                                }
                            ]
                        },
                        "offers": [{**OFFER, "id": "low"}],
                    }
                ),
                "op",
            )
            await gw.campaigns.launch(campaign.id, "op")  # returns once its pushes are made
            assert (await gw.campaigns.stats(campaign.id)).devices_pushed == 0
            assert inbox.get(topics.offers(device)) == []  # full filter: not selected

            def bundles() -> list[OfferBundle]:
                return [OfferBundle.model_validate(b) for b in inbox.get(topics.offers(device))]

            await report(0.1)  # now it needs one: pushed on the next scheduler tick
            await eventually(lambda: len(bundles()) == 1)
            assert [o.id for o in bundles()[0].offers] == ["low"]

            # Past half its lifetime, the holder gets a fresh bundle before it expires.
            first = bundles()[0]
            await gw.db.call(_age_bundles, campaign, timedelta(days=4))
            assert await gw.campaigns.delivery.refresh_due() == 1
            await eventually(lambda: len(bundles()) == 2)
            fresh = bundles()[1]
            assert fresh.id != first.id and fresh.expires_at > first.expires_at
            assert [o.id for o in fresh.offers] == ["low"]

            await report(0.95)  # refilled: the offer is withdrawn
            await eventually(lambda: len(bundles()) == 3)
            assert (bundles()[2].offers, bundles()[2].revokes) == ([], ["low"])
        finally:
            inbox.close()


async def _stored(gw: Gateway, n: int) -> bool:
    return gw.counters["batches_stored"] >= n


def _age_bundles(store: Session, campaign: Campaign, by: timedelta) -> None:
    """Make the campaign's bundles look `by` older (same lifetime)."""
    for row in store.conn.execute(
        "SELECT bundle_id, created_at, expires_at FROM device_pushes WHERE campaign_id = ?",
        [campaign.id],
    ).fetchall():
        store.conn.execute(
            "UPDATE device_pushes SET created_at = ?, expires_at = ? WHERE bundle_id = ?",
            [
                format_time(parse_time(row["created_at"]) - by),
                format_time(parse_time(row["expires_at"]) - by),
                row["bundle_id"],
            ],
        )


def _markers(data: Path) -> int:
    db = sqlite3.connect(f"file:{data / 'gateway.db'}?mode=ro", uri=True, timeout=2)
    try:
        return int(db.execute("SELECT count(*) FROM campaign_pending").fetchone()[0])
    finally:
        db.close()


async def test_a_launch_whose_catalog_never_went_out_is_pushed_after_a_sigkill(
    own_mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    root = f"pk{uuid.uuid4().hex[:8]}/v1"
    topics = Topics(root)
    data = tmp_path / "gw"
    log = tmp_path / "gateway.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await start_gateway(own_mosquitto.url, data, port, log, "--topic-root", root, timeout=30)
    try:
        token = await asyncio.to_thread(create_token, data)
        async with aiohttp.ClientSession(
            base, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            resp = await http.post(
                "/v1/campaigns",
                json={"name": "k", "cohorts": ["all"], "offers": [{**OFFER, "id": "k1"}]},
            )
            cid = (await resp.json())["id"]
            own_mosquitto.kill()  # the broker is gone: the catalog cannot go out
            launched = await http.post(f"/v1/campaigns/{cid}/launch")
            assert launched.status == 200
        assert await asyncio.to_thread(_markers, data) == 1  # committed with the state
        proc.send_signal(signal.SIGKILL)  # the in-memory retry dies with the process
        proc.wait(timeout=10)
        assert await asyncio.to_thread(_markers, data) == 1
        own_mosquitto.start()
        async with aiomqtt.Client("127.0.0.1", own_mosquitto.port) as client:
            await client.subscribe(topics.cohort_offers("all"), qos=1)
            proc = await start_gateway(
                own_mosquitto.url, data, port, log, "--topic-root", root, timeout=30
            )
            async with asyncio.timeout(30):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    catalog = OfferBundle.model_validate_json(message.payload)
                    if catalog.offers:
                        break
            assert [o.id for o in catalog.offers] == ["k1"]

        async def cleared() -> bool:
            return await asyncio.to_thread(_markers, data) == 0

        await eventually(cleared)
    finally:
        stop(proc)
