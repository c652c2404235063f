"""Campaign delivery and flash-sale claims against a real Mosquitto and an in-process gateway.

`launch_to_device_p99_ms`: from the launch request to "offer verified and stored" on each of
1,000 simulated devices (light aiomqtt clients, several devices per connection, each device
verifying the Ed25519 signature with `protocol.signing` and storing the offers in memory),
for a cohort push (one retained publish) vs one push per device (the baseline).
`claims_per_s`: 2,000 devices claim 500 coupons; claims per second end to end with exactly
500 granted (checked), claims decided in batched transactions vs one transaction per claim.
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
from cloud_gateway.auth import create_token
from cloud_gateway.config import GatewaySettings
from cloud_gateway.service import Gateway
from edgemart.broker import MosquittoProcess
from protocol import codec
from protocol.envelopes import ClaimRequest, State, TrustFile
from protocol.ids import new_id, utcnow
from protocol.signing import Verifier

DEVICES = 1000
PER_CONNECTION = 25
CLAIMERS = 2000
STOCK = 500
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


async def _claims(broker: MosquittoProcess, data: Path, batch_max: int) -> tuple[float, float]:
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
        devices = [f"cl-{i:04d}" for i in range(CLAIMERS)]
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        granted = 0
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, identifier=f"sub-{uuid.uuid4().hex[:6]}"
        ) as sub:
            await sub.subscribe(f"{topics.root}/dev/+/down/claim", qos=1)

            async def collect() -> None:
                nonlocal granted
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    obj = json.loads(message.payload)
                    answered[obj["device_id"]] = time.perf_counter()
                    granted += bool(obj["granted"])

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
                for i in range(0, CLAIMERS, 64):
                    chunk = devices[i : i + 64]

                    async def one(j: int, d: str) -> None:
                        claim = ClaimRequest(
                            id=new_id(), device_id=d, offer_id="flash", campaign_id=cid, at=utcnow()
                        )
                        sent[d] = time.perf_counter()
                        await pubs[j % 8].publish(topics.claim_up(d), codec.encode(claim), qos=1)

                    await asyncio.gather(*(one(i + j, d) for j, d in enumerate(chunk)))
                await _wait(lambda: len(answered) >= CLAIMERS, 120)
            finally:
                collector.cancel()
                for p in pubs:
                    await p.__aexit__(None, None, None)
        took = max(answered.values()) - start
        if granted != STOCK:
            raise AssertionError(f"{granted} granted of {STOCK} coupons")
        latencies = [(answered[d] - sent[d]) * 1000 for d in devices]
        return CLAIMERS / took, percentiles(latencies, 0.99)[0]


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
            f"{CLAIMERS} devices claim {STOCK} coupons over MQTT, exactly {STOCK} granted; "
            f"claim p99 {batched_p99:.0f} ms (baseline p99 {single_p99:.0f} ms)",
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
