"""One process of `waves_bench`'s light devices: `python -m bench.wave_devices PORT ROOT
FIRST COUNT` connects COUNT devices (`tv-FIRST`...), one aiomqtt connection each, registers
them (a retained birth), says `ready`, reads the sale's waves as one JSON line on stdin,
runs each wave's crowd (a share `want` of its devices, drawn at random), and on `stop`
prints what its devices received as one JSON line.

A device's handler only notes an arrival and keeps the bytes; every kept message is verified
after the run, timed, and that time added to its arrival (a real device verifies on its own
CPU, not queued behind the others in one loop). The crowd of a wave, each device pressing at
a uniform moment in `crowd_s` after the wave, by `mode`:

- `admit`: the device heeds the offer's admission share (`Offer.admit`, grown by the notices'
  `admit`) with its lottery ticket (`protocol.waves.admitted`): not admitted, its claim waits
  and goes when a notice admits it; a notice listing the offer sold out closes it unsent;
- `notice`: it claims unless a notice it holds lists the offer sold out (no admission);
- `none`: it claims whatever it holds (neither).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from typing import Any

import aiomqtt

from protocol import codec
from protocol.envelopes import ClaimRequest, State, TrustFile
from protocol.ids import new_id, parse_time, utcnow
from protocol.signing import Verifier
from protocol.topics import Topics
from protocol.waves import admitted


class Device:
    """What one device received (kept bytes) and knows (newest notice, unverified in the
    loop: verified and timed afterwards)."""

    def __init__(self, device_id: str) -> None:
        self.id = device_id
        self.kept: list[tuple[str, float, bytes, bool]] = []
        self.sold_out: set[str] = set()
        self.admit: dict[str, float] = {}
        self.version = 0
        self.waiting: set[str] = set()
        """Offers whose claim waits for this device's turn."""


class Worker:
    def __init__(self, port: int, topics: Topics, devices: list[str]) -> None:
        self.port = port
        self.topics = topics
        self.devices = {d: Device(d) for d in devices}
        self.clients: dict[str, aiomqtt.Client] = {}
        self.first_admit: dict[str, float] = {}
        """Each wave offer's share at the reveal, from the signed catalog."""
        self.modes: dict[str, str] = {}
        self.campaign = ""
        self.sent: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self.wanting: dict[str, int] = {}

    def take(self, dev: Device, message: aiomqtt.Message) -> list[str]:
        """Note an arrival; the offers this device may claim now (a notice admitted it)."""
        now = time.time()
        payload = message.payload
        assert isinstance(payload, bytes)
        if not payload:
            return []
        kind = message.topic.value.rsplit("/", 1)[-1]
        dev.kept.append((kind, now, payload, bool(message.retain)))
        obj = json.loads(payload)
        if kind == "offers":
            for o in obj["offers"]:
                if o.get("admit") is not None:
                    self.first_admit[o["id"]] = o["admit"]
            return []
        if kind != "soldout" or obj["version"] <= dev.version:
            return []
        dev.version = obj["version"]
        dev.sold_out = set(obj["offers"])
        dev.admit = obj.get("admit", {})
        go = []
        for oid in sorted(dev.waiting):
            if oid in dev.sold_out:
                dev.waiting.discard(oid)
                self.held[oid] = self.held.get(oid, 0) + 1
            elif self._admitted(dev, oid):
                dev.waiting.discard(oid)
                go.append(oid)
        return go

    def _admitted(self, dev: Device, oid: str) -> bool:
        first = self.first_admit.get(oid)
        share = None if first is None else max(first, dev.admit.get(oid, 0.0))
        return admitted(dev.id, oid, share)

    async def claim(self, dev: Device, oid: str) -> None:
        req = ClaimRequest(
            id=new_id(), device_id=dev.id, offer_id=oid, campaign_id=self.campaign, at=utcnow()
        )
        self.sent[oid] = self.sent.get(oid, 0) + 1
        await self.clients[dev.id].publish(self.topics.claim_up(dev.id), codec.encode(req), qos=1)

    async def press(self, dev: Device, oid: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        mode = self.modes[oid]
        if mode != "none" and oid in dev.sold_out:
            self.held[oid] = self.held.get(oid, 0) + 1
        elif mode == "admit" and not self._admitted(dev, oid):
            dev.waiting.add(oid)
            self.queued[oid] = self.queued.get(oid, 0) + 1
        else:
            await self.claim(dev, oid)

    async def consume(self, dev: Device) -> None:
        async for message in self.clients[dev.id].messages:
            for oid in self.take(dev, message):
                await self.claim(dev, oid)

    def settle(self, verifier: Verifier) -> dict[str, Any]:
        """Verify and time what was kept: per device, when each offer's verified notice /
        catalog with stock 0 was held, and the transits of live clock samples."""
        out: dict[str, Any] = {}
        for dev in self.devices.values():
            notice: dict[str, float] = {}
            catalog: dict[str, float] = {}
            transit: list[float] = []
            for kind, arrived, payload, retained in dev.kept:
                began = time.perf_counter()
                obj = json.loads(payload)
                verifier.verify(obj)
                held = arrived + (time.perf_counter() - began)
                if kind == "timestamp":
                    if not retained:
                        transit.append(held - parse_time(obj["issued_at"]).timestamp())
                elif kind == "soldout":
                    for oid in obj["offers"]:
                        notice.setdefault(oid, held)
                else:
                    for o in obj["offers"]:
                        if o.get("stock") == 0:
                            catalog.setdefault(o["id"], held)
            out[dev.id] = {"notice": notice, "catalog": catalog, "transit": transit}
        return {
            "devices": out,
            "sent": self.sent,
            "held": self.held,
            "queued": self.queued,
            "wanting": self.wanting,
        }


async def _line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def main(port: int, root: str, first: int, count: int) -> None:
    topics = Topics(root)
    worker = Worker(port, topics, [f"tv-{i:04d}" for i in range(first, first + count)])
    tasks: list[asyncio.Task[None]] = []
    async with contextlib.AsyncExitStack() as stack:
        for d, dev in worker.devices.items():
            client = aiomqtt.Client("127.0.0.1", port, identifier=f"{d}-{root}")
            await stack.enter_async_context(client)
            for topic in (
                topics.timestamp(),
                topics.cohort_soldout("all"),
                topics.cohort_offers("all"),
            ):
                await client.subscribe(topic, qos=1)
            birth = State(device_id=d, status="online", at=utcnow(), cohorts=["all"])
            await client.publish(topics.state(d), codec.encode(birth), qos=1, retain=True)
            worker.clients[d] = client
            tasks.append(asyncio.create_task(worker.consume(dev), name="bench-device"))
        print("ready", flush=True)
        sale = json.loads(await _line())
        worker.campaign = sale["campaign"]
        trust = TrustFile.model_validate_json(sale["trust"])
        presses = []
        for wave in sale["waves"]:
            worker.modes[wave["offer"]] = wave["mode"]
            rng = random.Random(f"{wave['offer']}/{first}")
            for dev in worker.devices.values():
                at = wave["at"] + rng.uniform(0, sale["crowd_s"])
                if rng.random() >= wave["want"]:
                    continue  # this device does not want this wave's offer
                worker.wanting[wave["offer"]] = worker.wanting.get(wave["offer"], 0) + 1
                presses.append(worker.press(dev, wave["offer"], at))
        crowd = asyncio.gather(*presses)
        await _line()  # stop
        await crowd
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    got = worker.settle(Verifier.from_public_keys(trust.keys))
    print(json.dumps(got), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
