"""Campaign delivery and flash-sale claims against a real Mosquitto and an in-process gateway.

`launch_to_device_p99_ms`: from the launch request to "offer verified and stored" on each of
1,000 simulated devices (light aiomqtt clients, one connection per device as in a real
fleet, so the broker fans a cohort push out to 1,000 sessions; each device verifying the
Ed25519 signature with `protocol.signing` and storing the offers in memory),
for a cohort push (one retained publish) vs one push per device (the baseline).
`claims_per_s`: sustained claims per second end to end, over several waves of 2,000 devices
claiming 500 coupons restocked before each wave, with the ledger checked (grants == stock
decremented == granted answers, no device twice); claims decided in batched transactions vs
one transaction per claim. `claims_p99_ms`: the p99 from a claim sent to its answer received
in that run, beside the per-claim-transaction p99.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from bench.record import Record, percentiles
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.backend import Session
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import ClaimRequest, State, TrustFile
from protocol.ids import new_id, utcnow
from protocol.signing import Verifier
from simulators.brokers import MosquittoProcess

DEVICES = 1000
PER_CONNECTION = 1
"""Devices per MQTT connection: 1 as in a fleet (more would spare the broker the fan-out a
cohort push costs and flatter it against one push per device)."""
CLAIMERS = 2000
STOCK = 500
WAVES = 4
OFFER = {
    "type": "coupon",
    "title": "TV streaming month -30%",
    "category": "tv_streaming",
    "discount": 0.3,
    "surfaces": ["tv_home_banner"],
}


def _settings(broker: MosquittoProcess, data: Path, **extra: Any) -> GatewaySettings:
    tag = uuid.uuid4().hex[:8]
    return GatewaySettings(
        broker=broker.url,
        data_dir=data,
        http_port=0,
        topic_root=f"b{tag}/v1",
        client_id=f"gw-{tag}",
        **extra,
    )


async def _wait(check: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:  # polls counters other tasks update; the latencies come from them
            if check():
                return
            await asyncio.sleep(0.02)


async def _launch_latencies(broker: MosquittoProcess, data: Path, per_device: bool) -> list[float]:
    settings = _settings(broker, data)
    topics = settings.topics
    devices = [f"tv-{i:04d}" for i in range(DEVICES)]
    async with Gateway(settings) as gw:
        verifier = Verifier.from_public_keys(
            TrustFile.model_validate_json(gw.trust_path.read_text()).keys
        )
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, identifier=f"reg-{uuid.uuid4().hex[:6]}"
        ) as reg:
            for d in devices:
                state = State(
                    device_id=d, status="online", profile="tv", cohorts=["all", "profile:tv"]
                )
                await reg.publish(topics.state(d), codec.encode(state), qos=1)
        await _wait(lambda: gw.counters["states_received"] >= DEVICES, 60)
        token = await asyncio.to_thread(create_token, settings.data_dir)
        spec: dict[str, Any] = {"name": "bench", "cohorts": ["all"], "offers": [OFFER]}
        if per_device:
            spec["targeting"] = {"devices": devices}
        else:
            spec["targeting"] = {"profiles": ["tv"]}
        done: dict[str, float] = {}
        stored: dict[str, list[dict[str, Any]]] = {}
        start = 0.0
        cid = ""

        def on_bundle(group: list[str], payload: bytes) -> None:
            for d in group:  # each device of the connection verifies and stores for itself
                if d in done:
                    continue
                obj = json.loads(payload)
                verifier.verify(obj)
                offers = [o for o in obj["offers"] if o["campaign_id"] == cid]
                if offers:
                    stored[d] = offers
                    done[d] = time.perf_counter()

        groups = [devices[i : i + PER_CONNECTION] for i in range(0, DEVICES, PER_CONNECTION)]
        clients = [
            aiomqtt.Client("127.0.0.1", broker.port, identifier=f"dev{i}-{uuid.uuid4().hex[:6]}")
            for i in range(len(groups))
        ]
        tasks = []
        for client, group in zip(clients, groups, strict=True):
            await client.__aenter__()
            if per_device:
                for d in group:
                    await client.subscribe(topics.offers(d), qos=1)
            else:
                await client.subscribe(topics.cohort_offers("profile:tv"), qos=1)

            async def consume(c: aiomqtt.Client = client, g: list[str] = group) -> None:
                async for message in c.messages:
                    assert isinstance(message.payload, bytes)
                    if per_device:
                        on_bundle([message.topic.value.split("/")[-3]], message.payload)
                    else:
                        on_bundle(g, message.payload)

            tasks.append(asyncio.create_task(consume(), name="bench-consume"))
        try:
            async with aiohttp.ClientSession(
                f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
            ) as http:
                cid = (await (await http.post("/v1/campaigns", json=spec)).json())["id"]
                start = time.perf_counter()
                resp = await http.post(f"/v1/campaigns/{cid}/launch")
                assert resp.status == 200, await resp.text()
            await _wait(lambda: len(done) >= DEVICES, 120)
        finally:
            for t in tasks:
                t.cancel()
            for client in clients:
                await client.__aexit__(None, None, None)
    return [(done[d] - start) * 1000 for d in devices]


def _restock(store: Session, campaign_id: str, offer_id: str, amount: int) -> None:
    """The next wave's coupons (what an operator's restock does to the stock row)."""
    with store.transaction():
        store.conn.execute(
            "UPDATE offer_stock SET stock = stock + ?, initial = initial + ?"
            " WHERE campaign_id = ? AND offer_id = ?",
            [amount, amount, campaign_id, offer_id],
        )


def _ledger(store: Session, campaign_id: str) -> tuple[int, int, int, int]:
    """(grants, distinct devices granted, stock decremented, stock left) from the database."""
    grants, devices = store.conn.execute(
        "SELECT count(*), count(DISTINCT device_id) FROM grants WHERE campaign_id = ?",
        [campaign_id],
    ).fetchone()
    initial, left = store.conn.execute(
        "SELECT sum(initial), sum(stock) FROM offer_stock WHERE campaign_id = ?", [campaign_id]
    ).fetchone()
    return int(grants), int(devices), int(initial - left), int(left)


async def _claims(broker: MosquittoProcess, data: Path, batch_max: int) -> tuple[float, float]:
    """Sustained claims: WAVES waves of CLAIMERS new devices, each wave after a restock of
    STOCK coupons. Returns (claims answered per second over the whole run, claim p99 ms),
    after checking the ledger: grants == stock decremented == granted answers, one per device."""
    settings = _settings(broker, data, claim_batch_max=batch_max)
    topics = settings.topics
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir)
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            spec = {
                "name": "flash",
                "cohorts": ["all"],
                "offers": [{**OFFER, "id": "flash", "limited": True, "stock": STOCK}],
            }
            cid = (await (await http.post("/v1/campaigns", json=spec)).json())["id"]
            await http.post(f"/v1/campaigns/{cid}/launch")
        waves = [[f"cl{w}-{i:04d}" for i in range(CLAIMERS)] for w in range(WAVES)]
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        granted: set[str] = set()
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, identifier=f"sub-{uuid.uuid4().hex[:6]}"
        ) as sub:
            await sub.subscribe(f"{topics.root}/dev/+/down/claim", qos=1)

            async def collect() -> None:
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    obj = json.loads(message.payload)
                    answered.setdefault(obj["device_id"], time.perf_counter())
                    if obj["granted"]:
                        granted.add(obj["device_id"])

            collector = asyncio.create_task(collect(), name="bench-collect")
            pubs = [
                aiomqtt.Client(
                    "127.0.0.1", broker.port, identifier=f"pub{i}-{uuid.uuid4().hex[:6]}"
                )
                for i in range(8)
            ]
            for p in pubs:
                await p.__aenter__()
            start = time.perf_counter()
            try:
                for w, devices in enumerate(waves):
                    if w:
                        await gw.db.call(_restock, cid, "flash", STOCK)
                    for i in range(0, CLAIMERS, 64):
                        chunk = devices[i : i + 64]

                        async def one(j: int, d: str) -> None:
                            claim = ClaimRequest(
                                id=new_id(),
                                device_id=d,
                                offer_id="flash",
                                campaign_id=cid,
                                at=utcnow(),
                            )
                            sent[d] = time.perf_counter()
                            await pubs[j % 8].publish(
                                topics.claim_up(d), codec.encode(claim), qos=1
                            )

                        await asyncio.gather(*(one(i + j, d) for j, d in enumerate(chunk)))
                    total = (w + 1) * CLAIMERS
                    await _wait(lambda total=total: len(answered) >= total, 120)
            finally:
                collector.cancel()
                for p in pubs:
                    await p.__aexit__(None, None, None)
        took = max(answered.values()) - start
        grants, devices_granted, decremented, left = await gw.db.call(_ledger, cid)
    expected = WAVES * STOCK
    if not (len(granted) == grants == devices_granted == decremented == expected and left == 0):
        raise AssertionError(
            f"ledger: {len(granted)} granted answers, {grants} grants to {devices_granted}"
            f" devices, stock decremented by {decremented} (left {left}); expected {expected}"
        )
    latencies = [(answered[d] - sent[d]) * 1000 for w in waves for d in w]
    return WAVES * CLAIMERS / took, percentiles(latencies, 0.99)[0]


async def _run_all(broker: MosquittoProcess, work: Path) -> list[Record]:
    cohort = await _launch_latencies(broker, work / "cohort", per_device=False)
    device = await _launch_latencies(broker, work / "device", per_device=True)
    batched_rate, batched_p99 = await _claims(broker, work / "claims-batched", 256)
    single_rate, single_p99 = await _claims(broker, work / "claims-single", 1)
    c99, d99 = percentiles(cohort, 0.99)[0], percentiles(device, 0.99)[0]
    return [
        Record(
            "launch_to_device_p99_ms",
            c99,
            "ms",
            "one push per device",
            d99,
            f"{DEVICES} devices as light aiomqtt clients ({PER_CONNECTION} per connection), each "
            f"verifying the Ed25519 signature and storing; cohort push p50 "
            f"{percentiles(cohort, 0.5)[0]:.0f} ms vs per-device p50 "
            f"{percentiles(device, 0.5)[0]:.0f} ms",
        ),
        Record(
            "claims_per_s",
            batched_rate,
            "claims/s",
            "one transaction per claim",
            single_rate,
            f"sustained: {WAVES} waves of {CLAIMERS} devices claiming {STOCK} restocked coupons"
            f" over MQTT ({WAVES * CLAIMERS} claims); checked: grants == stock decremented =="
            f" granted answers == {WAVES * STOCK}, no device twice",
        ),
        Record(
            "claims_p99_ms",
            batched_p99,
            "ms",
            "one transaction per claim",
            single_p99,
            "claim sent to its signed answer received, p99 over every claim of the sustained"
            " run above",
        ),
    ]


def run() -> list[Record]:
    with tempfile.TemporaryDirectory(prefix="edgemart-bench-") as tmp:
        broker = MosquittoProcess(str(Path(tmp) / "mosquitto"))
        broker.start()
        try:
            return asyncio.run(_run_all(broker, Path(tmp)))
        finally:
            broker.stop()
