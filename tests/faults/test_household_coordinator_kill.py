"""The household's coordinator, a real process, SIGKILLed (no goodbye) and replaced: the
members notice, elect the next one, and the household's exposure log survives both changes."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import pytest

from agent.household.membership import load_key, write_membership
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.household import key_fingerprint
from protocol.signing import Signer
from simulators.household_lan import membership
from tests.support.household import clients, member
from tests.support.processes import spawn, tail
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
HH = "hh-kill"
MEMBER = (sys.executable, "-m", "agent.household")


def _hub_files(tmp_path: Path, gateway: Signer, secret: bytes) -> tuple[Path, Path, str]:
    data = tmp_path / "hub"
    key = load_key(data)
    write_membership(data, membership(gateway, HH, "hub-1", key, ["hub"], secret))
    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[gateway.public], topic_root="t/v1")))
    return data, trust, key_fingerprint(key.public.public_key)


async def test_coordinator_sigkilled_and_replaced(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    data, trust, hub_fp = await asyncio.to_thread(_hub_files, tmp_path, gateway, secret)
    creds = [
        await asyncio.to_thread(
            member, gateway, HH, f"m-{i}", ["member"], tmp_path / f"m{i}", secret
        )
        for i in range(2)
    ]
    args = ["--data-dir", str(data), "--trust", str(trust), "--tick", "0.2"]
    log = tmp_path / "hub.log"
    hub = spawn(args, log, command=MEMBER)
    try:
        async with clients(creds, gateway) as cs:
            await eventually(
                lambda: all(c.connected_to == hub_fp for c in cs),
                timeout=30,
                what=f"members with the hub process ({tail(log, 500)})",
            )
            cs[0].exposed("e-before-kill", "offer-a", "c-a", time.time())
            await eventually(lambda: "e-before-kill" in cs[1].kept, what="the log reached m-1")
            os.kill(hub.pid, signal.SIGKILL)  # no goodbye: its records stay in the caches
            hub.wait(timeout=10)
            lowest = min(c.fingerprint for c in creds)
            await eventually(
                lambda: all(c.connected_to == lowest for c in cs), timeout=30, what="re-elected"
            )
            assert all(
                c.counters["household_coordinators_lost"] >= 1
                for c in cs
                if c.creds.fingerprint != lowest
            )
            serving = next(c for c in cs if c.creds.fingerprint == lowest)
            assert serving.server is not None
            state = serving.server.state
            await eventually(lambda: "e-before-kill" in state.exposures, what="log replayed")
            cs[1].exposed("e-during", "offer-b", "c-b", time.time())
            # the replacement: a new process with the hub's identity
            hub = spawn(args, log, command=MEMBER)
            await eventually(
                lambda: all(c.connected_to == hub_fp for c in cs), timeout=30, what="the new hub"
            )
            hold = await eventually(cs[0].hold, what="the new hub answers")
            assert hold.offers == frozenset({"offer-b"})  # m-1's exposure, replayed to it
            hold1 = await eventually(cs[1].hold)
            assert hold1.offers == frozenset({"offer-a"})  # m-0's, replayed across two changes
    finally:
        if hub.poll() is None:
            hub.send_signal(signal.SIGTERM)
            hub.wait(timeout=10)
