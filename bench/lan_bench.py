"""Household LAN figures (issue 17): `lan_discovery_ms`, from a device joining the LAN to its
authenticated session with the household's coordinator (mDNS browse and resolve on loopback,
TXT proof, election, the two-way handshake), p99 over repeated joins into a running household
(a hub and two members); beside it, in the same run, a bare python-zeroconf resolve of one
known service name (the mDNS floor).

`python -m bench.lan_bench` prints the figures (writes nothing)."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from agent.household.client import HouseholdClient
from agent.household.discovery import SERVICE_TYPE
from agent.household.membership import Credentials, credentials, load_key
from bench.record import Record
from protocol.household import MemberRole
from protocol.signing import Signer, Verifier
from simulators.household_lan import membership

JOINS = 20
PAUSE_S = 1.1
"""Between measurements: an mDNS responder multicasts a record at most once a second."""
ROLES: tuple[MemberRole, ...] = ("hub", "member", "member")
HH = "hh-bench"


def _p99(values: list[float]) -> float:
    """The 99th percentile; with fewer than two values, the largest (nan for none: a run
    whose bare resolves all missed still reports its joins, and the note counts the misses)."""
    if len(values) < 2:
        return max(values, default=float("nan"))
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _creds(
    gateway: Signer, device_id: str, role: MemberRole, folder: Path, secret: bytes
) -> Credentials:
    key = load_key(folder)
    grant = membership(gateway, HH, device_id, key, [role], secret)
    return credentials(grant, key, Verifier.from_public_keys([gateway.public]))


async def _floor(name: str) -> float | None:
    """One bare resolve of a known, advertised service name, ms (a fresh zeroconf each time);
    None when it did not resolve within 3 s (counted in the note)."""
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        t0 = time.perf_counter()
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc.zeroconf, 3000):
            return None
        return (time.perf_counter() - t0) * 1000
    finally:
        await zc.async_close()


async def _measure(tmp: Path, joins: int) -> tuple[list[float], list[float | None]]:
    gateway = Signer.generate("bench")
    secret = secrets.token_bytes(32)
    verifier = Verifier.from_public_keys([gateway.public])
    base = [
        await asyncio.to_thread(_creds, gateway, f"dev-{i}", role, tmp / f"base{i}", secret)
        for i, role in enumerate(ROLES)
    ]
    running = [HouseholdClient(c, verifier, tick_s=1.0) for c in base]
    await asyncio.gather(*(c.start() for c in running))
    try:
        hub = running[0]
        for c in running:
            if not await c.wait_connected(30.0):
                raise RuntimeError("the household did not settle")
        assert hub.discovery is not None
        times: list[float] = []
        floor: list[float | None] = []
        for i in range(joins):
            creds = await asyncio.to_thread(
                _creds, gateway, f"joiner-{i}", "member", tmp / f"j{i}", secret
            )
            joiner = HouseholdClient(creds, verifier, tick_s=1.0)
            await joiner.start()
            try:
                if not await joiner.wait_connected(10.0) or joiner.found_at is None:
                    raise RuntimeError(f"joiner {i} found no coordinator")
                times.append((joiner.found_at - joiner.joined_at) * 1000)
            finally:
                await joiner.close()
            await asyncio.sleep(PAUSE_S)  # joins are not back to back: responders rate-limit
            floor.append(await _floor(hub.discovery.name))
            await asyncio.sleep(PAUSE_S)
        return times, floor
    finally:
        await asyncio.gather(*(c.close() for c in running))


def run() -> list[Record]:
    with tempfile.TemporaryDirectory() as tmp:
        times, floor_all = asyncio.run(_measure(Path(tmp), JOINS))
    floor = [f for f in floor_all if f is not None]
    return [
        Record(
            "lan_discovery_ms",
            _p99(times),
            "ms (p99)",
            "bare mDNS resolve, p99",
            _p99(floor),
            f"{JOINS} joins into a household of 3 (hub + 2 members) on loopback, real mDNS;"
            f" p50 {statistics.median(times):.0f} ms, max {max(times):.0f} ms; goal < 2000 ms;"
            f" bare resolves that missed 3 s: {len(floor_all) - len(floor)}",
        )
    ]


if __name__ == "__main__":
    for record in run():
        sys.stdout.write(f"{record.name} {record.value:.1f} {record.unit} ({record.note});")
        sys.stdout.write(f" baseline {record.baseline_value:.1f} ms\n")
