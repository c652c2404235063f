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
from protocol.ids import format_time, parse_time, utcnow
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port

DEVICES = int(os.environ.get("BENCH_WAVES_DEVICES", "1000"))
PROCESSES = int(os.environ.get("BENCH_WAVES_PROCESSES", "4"))
STOCK = max(1, DEVICES // 10)
CROWD_S = 2.0
FIRST_WAVE_S = 14.0
"""Wave A opens this long after the sale is made (devices connect first; the gateway's
time sample goes out 5 s before each wave)."""
BETWEEN_S = 12.0
MODES = {"wave-a": "admit", "wave-b": "notice", "wave-c": "none", "wave-d": "admit"}
"""How each wave's crowd behaves (`bench.wave_devices`): admitted in rounds and heeding the
notice (the design), heeding only the notice (before admission), neither; and the design
again with a third of the devices wanting (the reach overstates the crowd threefold, so
later rounds must let more in)."""
WANT = {"wave-d": 1 / 3}
"""The share of devices wanting a wave's offer (1 unless named)."""
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


class Answers:
    """The gateway's claim answers, seen on the broker: grants and sold-out refusals per
    offer, and when (the gateway's signed decision time) each offer's last coupon went."""

    def __init__(self) -> None:
        self.granted: dict[str, int] = {}
        self.sold_out: dict[str, int] = {}
        self.last_grant: dict[str, float] = {}
        self.last_seen = time.time()

    def take(self, payload: bytes) -> None:
        obj = json.loads(payload)
        oid = obj["offer_id"]
        self.last_seen = time.time()
        if obj["granted"]:
            self.granted[oid] = self.granted.get(oid, 0) + 1
            # when the gateway decided it (signed in the answer, before its commit): the
            # latest grant's is when the offer sold out
            decided = parse_time(obj["issued_at"]).timestamp()
            self.last_grant[oid] = max(self.last_grant.get(oid, 0.0), decided)
        elif obj.get("reason") == "sold out":
            self.sold_out[oid] = self.sold_out.get(oid, 0) + 1


async def _workers(port: int, root: str) -> list[asyncio.subprocess.Process]:
    """`PROCESSES` processes of light devices (`bench.wave_devices`), each ready."""
    per = -(-DEVICES // PROCESSES)
    procs = []
    for first in range(0, DEVICES, per):
        procs.append(
            await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "bench.wave_devices", str(port), root),
                *(str(first), str(min(per, DEVICES - first))),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        async with asyncio.timeout(120):
            line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"a device process did not start: {line!r}")
    return procs


async def _say(procs: list[asyncio.subprocess.Process], line: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()


async def _measure(broker: MosquittoProcess, tmp: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    root = f"w{tag}/v1"
    topics = Topics(root)
    data = tmp / "gw"
    port = free_port()
    gateway = _gateway(broker.url, data, port, root, tmp / "gateway.log")
    procs: list[asyncio.subprocess.Process] = []
    try:
        await _healthy(f"http://127.0.0.1:{port}/healthz", gateway)
        trust = (data / "trust.json").read_text()
        answers = Answers()
        token = await asyncio.to_thread(create_token, data)
        async with (
            aiomqtt.Client("127.0.0.1", broker.port, identifier=f"watch-{tag}") as watcher,
            aiohttp.ClientSession(
                f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
            ) as http,
        ):
            await watcher.subscribe(f"{topics.root}/dev/+/down/claim", qos=1)

            async def watch() -> None:
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    answers.take(message.payload)

            watching = asyncio.create_task(watch(), name="bench-watch")
            procs = await _workers(broker.port, root)
            async with asyncio.timeout(60):  # every birth stored: the sale's reach is known
                while True:
                    got = await (await http.get("/v1/devices")).json()
                    if len(got["devices"]) >= DEVICES:
                        break
                    await asyncio.sleep(0.2)
            wave_a = utcnow() + timedelta(seconds=FIRST_WAVE_S)
            ats = {oid: wave_a + timedelta(seconds=BETWEEN_S * i) for i, oid in enumerate(MODES)}
            spec = {
                "name": "bench live sale",
                "cohorts": ["all"],
                "waves": [
                    {"at": format_time(at), "offers": [{**OFFER, "id": oid}]}
                    for oid, at in ats.items()
                ],
            }
            resp = await http.post("/v1/live-sales", json=spec)
            assert resp.status == 201, await resp.text()
            cid = (await resp.json())["campaign"]["id"]
            assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200
            times = {oid: parse_time(format_time(at)).timestamp() for oid, at in ats.items()}
            waves: list[dict[str, Any]] = [
                {"offer": oid, "mode": MODES[oid], "at": t, "want": WANT.get(oid, 1.0)}
                for oid, t in times.items()
            ]
            sale = {"campaign": cid, "trust": trust, "crowd_s": CROWD_S, "waves": waves}
            await _say(procs, json.dumps(sale))
            last = max(times.values()) + CROWD_S
            while time.time() < last or time.time() - answers.last_seen < 3.0:  # noqa: ASYNC110 - polls the watcher's clock
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # the last notices and catalogs
            await _say(procs, "stop")
            results = []
            for proc in procs:
                assert proc.stdout is not None
                async with asyncio.timeout(300):
                    results.append(json.loads(await proc.stdout.readline()))
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        gateway.terminate()
        await asyncio.to_thread(gateway.wait, 30)
    got = _collect(results, answers, len(times))
    got["sold_after_s"] = {
        oid: answers.last_grant.get(oid, float("nan")) - at for oid, at in times.items()
    }
    return got


def _collect(results: list[dict[str, Any]], answers: Answers, waves: int) -> dict[str, Any]:
    devices = {d: v for r in results for d, v in r["devices"].items()}
    count: dict[str, dict[str, int]] = {"sent": {}, "held": {}, "queued": {}, "wanting": {}}
    for r in results:
        for key, per in count.items():
            for oid, n in r[key].items():
                per[oid] = per.get(oid, 0) + n
    rng = random.Random(19)
    skew = [abs(rng.uniform(-SKEW_S, SKEW_S)) * 1000 for _ in devices]
    sold = answers.last_grant["wave-a"]
    return {
        "notice_ms": [(v["notice"]["wave-a"] - sold) * 1000 for v in devices.values()],
        "catalog_ms": [(v["catalog"]["wave-a"] - sold) * 1000 for v in devices.values()],
        # a device's offset is its best sample so far (`GatewayClock`): its reveal error at
        # each wave is the least transit of the samples it had by then
        "reveal_ms": [
            abs(min(v["transit"][: n + 1])) * 1000
            for v in devices.values()
            for n in range(min(waves, len(v["transit"])))
        ],
        "own_clock_ms": skew,
        "samples": sum(len(v["transit"]) for v in devices.values()),
        "after": {oid: answers.sold_out.get(oid, 0) for oid in MODES},
        "granted": {oid: answers.granted.get(oid, 0) for oid in MODES},
        **count,
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
    share = {oid: 100 * n / got["wanting"][oid] for oid, n in got["after"].items()}
    setup = (
        f"{DEVICES:,} devices (one aiomqtt connection each) in {PROCESSES} processes,"
        f" {STOCK} coupons a wave"
    )
    g, s, h, q, w = (got[k] for k in ("granted", "sent", "held", "queued", "wanting"))
    after_s = got["sold_after_s"]
    return [
        Record(
            "sold_out_to_devices_p99_ms",
            notice,
            "ms",
            "the re-published cohort catalog with stock 0, same sell-out, same devices",
            catalog,
            f"{setup}; wave A (admitted in rounds); from the decision granting the last coupon"
            " (its answer's signed issued_at) to the verified notice held on each device",
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
            share["wave-a"],
            "%",
            "the same crowd heeding only the sold-out notice (no admission)",
            share["wave-b"],
            f"{setup}; every device wants each wave and presses once at U(0, {CROWD_S:g} s)"
            " after it; claims answered sold out / devices wanting. Admitted in rounds (A):"
            f" granted {g['wave-a']}, sent {s.get('wave-a', 0)}, waited for a turn"
            f" {q.get('wave-a', 0)}, told sold out at the edge {h.get('wave-a', 0)}. Notice"
            f" only (B): granted {g['wave-b']}, sent {s.get('wave-b', 0)}, held"
            f" {h.get('wave-b', 0)}. Neither (C): {share['wave-c']:.1f} %, granted"
            f" {g['wave-c']}, sent {s.get('wave-c', 0)}. Admitted in rounds, {w['wave-d']}"
            f" wanting of the {DEVICES:,} reached (D): {share['wave-d']:.1f} %, granted"
            f" {g['wave-d']}, sent {s.get('wave-d', 0)}, waited {q.get('wave-d', 0)}, told"
            f" sold out at the edge {h.get('wave-d', 0)}. The last coupon went (s after the"
            f" wave): {', '.join(f'{k[-1].upper()} {v:.1f}' for k, v in after_s.items())}",
        ),
    ]
