"""Provisioning figures: `provision_ms` p99 for 1,000 devices asking at once (claim check,
CSR check, certificate signed by the fleet CA, row and audit committed), over loopback HTTP
to the gateway's API on SQLite, beside one device provisioning alone.

`python -m bench.provision_bench` prints the figures (writes nothing)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from agent.provisioning.flow import make_request
from bench.record import Record
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.open import open_backend, open_session
from cloud_gateway.provisioning.service import create_batch
from cloud_gateway.runtime.build import build
from cloud_gateway.security.keys import load_or_create
from protocol.ids import utcnow

DEVICES = 1000


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def _measure(tmp: Path, devices: int) -> tuple[list[float], float]:
    """(each device's provisioning time under the storm, ms; one device alone, ms)."""
    settings = GatewaySettings(broker="mqtt://127.0.0.1:9", data_dir=tmp / "gw", http_port=0)
    keys = await asyncio.to_thread(load_or_create, settings.data_dir, settings.topic_root)
    backend = await open_backend(settings, utcnow).open()
    parts = build(settings, clock=utcnow, backend=backend, keys=keys)

    def batch() -> str:
        store = open_session(settings.data_dir, None)
        try:
            return create_batch(store, "bench", devices + 2, "bench")
        finally:
            store.close()

    claim = await asyncio.to_thread(batch)
    # the devices' own work (a key pair and a CSR each) is done before the storm
    csrs = [make_request(f"tv-pv-{i:05d}")[1] for i in range(devices + 2)]
    port = await parts.http.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/v1/provision"
    headers = {"Authorization": f"Claim {claim}"}
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

            async def one(i: int) -> float:
                t0 = time.perf_counter()
                body = {"device_id": f"tv-pv-{i:05d}", "csr": csrs[i]}
                async with http.post(url, json=body) as resp:
                    await resp.read()
                    if resp.status != 201:
                        raise RuntimeError(f"device {i}: {resp.status}")
                return (time.perf_counter() - t0) * 1000

            await one(devices + 1)  # warm: the CA and trust file loaded, a connection open
            alone = await one(devices)
            times = await asyncio.gather(*(one(i) for i in range(devices)))
    finally:
        await parts.http.stop()
        await backend.close()
    return list(times), alone


def run() -> list[Record]:
    with tempfile.TemporaryDirectory() as tmp:
        times, alone = asyncio.run(_measure(Path(tmp), DEVICES))
    p99 = _p99(times)
    return [
        Record(
            "provision_ms",
            p99,
            "ms (p99)",
            "one device alone",
            alone,
            f"{DEVICES} devices at once over loopback HTTP, SQLite; p50"
            f" {statistics.median(times):.1f} ms, max {max(times):.1f} ms",
        )
    ]


if __name__ == "__main__":
    for record in run():
        sys.stdout.write(f"{record.name} {record.value:.1f} {record.unit} ({record.note});")
        sys.stdout.write(f" alone {record.baseline_value:.1f} ms\n")
