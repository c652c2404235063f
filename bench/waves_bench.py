"""Live-sale waves (issue 19) against a real Mosquitto and an in-process gateway, with
`BENCH_WAVES_DEVICES` (default 1,000) light aiomqtt devices, one connection each as in a fleet,
each verifying every signed message it uses (`protocol.signing`), their clocks off by a
uniform -2..+2 s. One live sale of two waves (A, then B 10 s later), `STOCK` coupons each;
every device wants each wave's offer and claims it at a uniform moment in the `CROWD_S`
after the wave opens.

- `sold_out_to_devices_p99_ms`: from the grant of wave A's last coupon (its answer seen on
  the broker) to each device holding the cohort's verified `SoldOut` notice that lists it;
  baseline, same event, same devices: the re-published cohort catalog carrying stock 0 (what
  devices had before the notice).
- `wave_reveal_skew_ms`: p99 over devices of |the moment a device reveals a wave - the wave's
  time|, on the true clock, with the offset each device takes from the signed timestamp the
  gateway sends before each wave (`protocol.waves.GatewayClock`); baseline: each device's own
  clock (its skew).
- `flash_crowd_claims_after_sold_out_pct`: claims reaching the gateway after the wave sold out
  (answered "sold out") as a share of the devices that wanted it, when devices stop claiming
  on the notice (wave A); baseline: the same crowd ignoring it (wave B).

The gateway is an `edgemart gateway run` process; the devices share the bench's event loop,
so a device's handler only notes an arrival, and the signature check it would run on its own
CPU is timed afterwards and added to that arrival (`Fleet`). On a loaded 2-core host the
tails still include the queueing of 1,000 sessions in one loop and one broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from bench.record import Record, percentiles
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import ClaimRequest, TrustFile
from protocol.ids import format_time, new_id, parse_time, utcnow
from protocol.signing import Verifier
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port

DEVICES = int(os.environ.get("BENCH_WAVES_DEVICES", "1000"))
STOCK = max(1, DEVICES // 10)
CROWD_S = 2.0
FIRST_WAVE_S = 14.0
"""Wave A opens this long after the sale is made (devices connect first; the gateway's
time sample goes out 5 s before each wave)."""
BETWEEN_S = 10.0
SKEW_S = 2.0
OFFER = {
    "type": "coupon",
    "title": "Live drop -50%",
    "category": "appliances",
    "discount": 0.5,
    "surfaces": ["tv_home_banner"],
    "limited": True,
    "stock": STOCK,
}


class Fleet:
    """What the devices received, by device: clock samples, notices, catalogs.

    A device's handler only notes the arrival and keeps the bytes; each kept message is
    verified after the run, timed, and that time added to its arrival. 1,000 real devices
    verify in parallel, each on its own CPU; verifying here, in the one loop all devices
    share, would queue every device behind the others' signatures."""

    def __init__(self, devices: list[str], topics: Any) -> None:
        rng = random.Random(19)
        self.devices = devices
        self.skew = {d: rng.uniform(-SKEW_S, SKEW_S) for d in devices}
        self.topics = topics
        self.kept: list[tuple[str, str, float, bytes, bool]] = []
        """(device, kind, arrival, payload, retained) of every message."""
        self.notice_seen: set[tuple[str, str]] = set()
        """(device, offer) of the notices that arrived (what a device heeds)."""

    def take(self, device: str, message: aiomqtt.Message) -> None:
        now = time.time()
        payload = message.payload
        assert isinstance(payload, bytes)
        if not payload:
            return
        topic = message.topic.value
        kind = topic.rsplit("/", 1)[-1]
        self.kept.append((device, kind, now, payload, bool(message.retain)))
        if kind == "soldout":
            for oid in json.loads(payload)["offers"]:
                self.notice_seen.add((device, oid))

    def settle(self, verifier: Verifier, watch: set[str]) -> dict[str, Any]:
        """Verify what was kept: (device, offer) -> when its verified notice / catalog with
        stock 0 was held; device -> the transits of its live clock samples."""
        notice: dict[tuple[str, str], float] = {}
        catalog: dict[tuple[str, str], float] = {}
        transit: dict[str, list[float]] = {d: [] for d in self.devices}
        for device, kind, arrived, payload, retained in self.kept:
            began = time.perf_counter()
            obj = json.loads(payload)
            verifier.verify(obj)
            held = arrived + (time.perf_counter() - began)
            if kind == "timestamp":
                if not retained:  # a live sample: its transit is this device's offset error
                    transit[device].append(held - parse_time(obj["issued_at"]).timestamp())
            elif kind == "soldout":
                for oid in obj["offers"]:
                    notice.setdefault((device, oid), held)
            else:
                for o in obj["offers"]:
                    if o["id"] in watch and o.get("stock") == 0:
                        catalog.setdefault((device, o["id"]), held)
        return {"notice": notice, "catalog": catalog, "transit": transit}


async def _wait(check: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polls what other tasks record
            await asyncio.sleep(0.02)


async def _crowd(
    fleet: Fleet,
    clients: dict[str, aiomqtt.Client],
    offer_id: str,
    cid: str,
    wave: float,
    *,
    heed: bool,
) -> tuple[int, int]:
    """Each device claims `offer_id` at wave + U(0, CROWD_S), unless (`heed`) it holds the
    notice listing it by then. (claims sent, claims held back)."""
    rng = random.Random(offer_id)
    sent = held = 0

    async def one(d: str, at: float) -> None:
        nonlocal sent, held
        await asyncio.sleep(max(0.0, at - time.time()))
        if heed and (d, offer_id) in fleet.notice_seen:
            held += 1
            return
        claim = ClaimRequest(
            id=new_id(), device_id=d, offer_id=offer_id, campaign_id=cid, at=utcnow()
        )
        await clients[d].publish(fleet.topics.claim_up(d), codec.encode(claim), qos=1)
        sent += 1

    await asyncio.gather(*(one(d, wave + rng.uniform(0, CROWD_S)) for d in fleet.devices))
    return sent, held


class Answers:
    """The gateway's claim answers, seen on the broker: grants and sold-out refusals per
    offer, and when (the gateway's signed decision time) each offer's last coupon went."""

    def __init__(self) -> None:
        self.granted: dict[str, int] = {}
        self.sold_out: dict[str, int] = {}
        self.last_grant: dict[str, float] = {}

    def take(self, payload: bytes) -> None:
        obj = json.loads(payload)
        oid = obj["offer_id"]
        if obj["granted"]:
            self.granted[oid] = self.granted.get(oid, 0) + 1
            # when the gateway decided it (signed in the answer, before its commit): the
            # latest grant's is when the offer sold out
            decided = parse_time(obj["issued_at"]).timestamp()
            self.last_grant[oid] = max(self.last_grant.get(oid, 0.0), decided)
        elif obj.get("reason") == "sold out":
            self.sold_out[oid] = self.sold_out.get(oid, 0) + 1

    def answered(self, oid: str) -> int:
        return self.granted.get(oid, 0) + self.sold_out.get(oid, 0)


async def _measure(broker: MosquittoProcess, tmp: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    root = f"w{tag}/v1"
    topics = Topics(root)
    data = tmp / "gw"
    port = free_port()
    devices = [f"tv-{i:04d}" for i in range(DEVICES)]
    gateway = _gateway(broker.url, data, port, root, tmp / "gateway.log")
    try:
        await _healthy(f"http://127.0.0.1:{port}/healthz", gateway)
        verifier = Verifier.from_public_keys(
            TrustFile.model_validate_json((data / "trust.json").read_text()).keys
        )
        fleet = Fleet(devices, topics)
        answers = Answers()
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[str, aiomqtt.Client] = {}
            tasks: list[asyncio.Task[None]] = []
            for d in devices:
                client = aiomqtt.Client("127.0.0.1", broker.port, identifier=f"{d}-{tag}")
                await stack.enter_async_context(client)
                for topic in (
                    topics.timestamp(),
                    topics.cohort_soldout("all"),
                    topics.cohort_offers("all"),
                ):
                    await client.subscribe(topic, qos=1)
                clients[d] = client

                async def consume(c: aiomqtt.Client = client, dev: str = d) -> None:
                    async for message in c.messages:
                        fleet.take(dev, message)

                tasks.append(asyncio.create_task(consume(), name="bench-device"))
            watcher = await stack.enter_async_context(
                aiomqtt.Client("127.0.0.1", broker.port, identifier=f"watch-{tag}")
            )
            await watcher.subscribe(f"{topics.root}/dev/+/down/claim", qos=1)

            async def watch() -> None:
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    answers.take(message.payload)

            tasks.append(asyncio.create_task(watch(), name="bench-watch"))
            try:
                token = await asyncio.to_thread(create_token, data)
                wave_a = utcnow() + timedelta(seconds=FIRST_WAVE_S)
                wave_b = wave_a + timedelta(seconds=BETWEEN_S)
                spec = {
                    "name": "bench live sale",
                    "cohorts": ["all"],
                    "waves": [
                        {"at": format_time(wave_a), "offers": [{**OFFER, "id": "wave-a"}]},
                        {"at": format_time(wave_b), "offers": [{**OFFER, "id": "wave-b"}]},
                    ],
                }
                async with aiohttp.ClientSession(
                    f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
                ) as http:
                    resp = await http.post("/v1/live-sales", json=spec)
                    assert resp.status == 201, await resp.text()
                    cid = (await resp.json())["campaign"]["id"]
                    assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200
                at_a, at_b = wave_a.timestamp(), wave_b.timestamp()
                sent_a, held_a = await _crowd(fleet, clients, "wave-a", cid, at_a, heed=True)
                await _wait(lambda: answers.answered("wave-a") >= sent_a, 60)
                sent_b, held_b = await _crowd(fleet, clients, "wave-b", cid, at_b, heed=False)
                await _wait(lambda: answers.answered("wave-b") >= sent_b, 60)
                await asyncio.sleep(2.0)  # the last catalogs and notices
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        gateway.terminate()
        await asyncio.to_thread(gateway.wait, 30)
    seen = fleet.settle(verifier, {"wave-a", "wave-b"})
    sold = answers.last_grant["wave-a"]
    transit = seen["transit"]
    return {
        "notice_ms": [(seen["notice"][(d, "wave-a")] - sold) * 1000 for d in devices],
        "catalog_ms": [(seen["catalog"][(d, "wave-a")] - sold) * 1000 for d in devices],
        # a device's offset is its best sample so far (`GatewayClock`): its reveal error at
        # each wave is the least transit of the samples it had by then
        "reveal_ms": [
            abs(min(transit[d][: n + 1])) * 1000
            for d in devices
            for n in range(min(2, len(transit[d])))
        ],
        "own_clock_ms": [abs(fleet.skew[d]) * 1000 for d in devices],
        "samples": sum(len(v) for v in transit.values()),
        "after_a": answers.sold_out.get("wave-a", 0),
        "after_b": answers.sold_out.get("wave-b", 0),
        "granted": (answers.granted.get("wave-a", 0), answers.granted.get("wave-b", 0)),
        "sent": (sent_a, sent_b),
        "held": (held_a, held_b),
    }


def _gateway(broker: str, data: Path, port: int, root: str, log: Path) -> subprocess.Popen[bytes]:
    """`edgemart gateway run`, a process of its own as in production."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "edgemart", "gateway", "run", "--broker", broker),
                *("--data-dir", str(data), "--http-port", str(port), "--topic-root", root),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited ({proc.returncode})")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)


def run() -> list[Record]:
    with tempfile.TemporaryDirectory(prefix="edgemart-waves-") as tmp:
        broker = MosquittoProcess(str(Path(tmp) / "mosquitto"))
        broker.start()
        try:
            got = asyncio.run(_measure(broker, Path(tmp)))
        finally:
            broker.stop()
    if not got["samples"]:
        raise RuntimeError("no device took a live sample of the gateway's clock")
    notice, catalog = (percentiles(got[k], 0.99)[0] for k in ("notice_ms", "catalog_ms"))
    reveal, own = (percentiles(got[k], 0.99)[0] for k in ("reveal_ms", "own_clock_ms"))
    share_a = 100 * got["after_a"] / DEVICES
    share_b = 100 * got["after_b"] / DEVICES
    setup = f"{DEVICES:,} devices (one aiomqtt connection each), {STOCK} coupons a wave"
    return [
        Record(
            "sold_out_to_devices_p99_ms",
            notice,
            "ms",
            "the re-published cohort catalog with stock 0, same sell-out, same devices",
            catalog,
            f"{setup}; from the decision granting the last coupon (its answer's signed"
            " issued_at) to the verified notice held on each device",
        ),
        Record(
            "wave_reveal_skew_ms",
            reveal,
            "ms",
            "each device's own clock (uniform -2..+2 s off)",
            own,
            f"{setup}; p99 |reveal - wave| on the true clock with the offset from the"
            f" gateway's signed timestamp ({got['samples']} live samples)",
        ),
        Record(
            "flash_crowd_claims_after_sold_out_pct",
            share_a,
            "%",
            "the same crowd ignoring the sold-out notice",
            share_b,
            f"{setup}; each device claims once at U(0, {CROWD_S:g} s) after the wave; claims"
            f" answered sold out / devices wanting (granted {got['granted'][0]}, sent"
            f" {got['sent'][0]}, held back {got['held'][0]} at the edge)",
        ),
    ]
