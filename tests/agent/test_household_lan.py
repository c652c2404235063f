"""The household on a real LAN segment (loopback, real mDNS packets through python-zeroconf):
discovery and election, re-election, spoofed adverts and coordinators, two households on one
segment, household caps across devices, consent on contributions."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from agent.household import handshake
from agent.household.client import HouseholdClient
from agent.household.discovery import SERVICE_TYPE
from agent.household.membership import Credentials
from protocol.household import MemberRole, advert_proof, household_hint
from protocol.signing import Signer, Verifier
from tests.support.household import clients, member
from tests.support.waiting import eventually

# real mDNS packets and LAN sessions between several agents on loopback: the integration tier
pytestmark = pytest.mark.integration


HH = "hh-lan-1"


def _household(
    tmp_path: Path, gateway: Signer, household: str, roles: list[MemberRole], secret: bytes
) -> list[Credentials]:
    return [
        member(
            gateway, household, f"{household}-d{i}", [role], tmp_path / household / str(i), secret
        )
        for i, role in enumerate(roles)
    ]


def _coordinators(cs: list[HouseholdClient]) -> set[str | None]:
    return {c.connected_to for c in cs}


async def test_four_devices_find_each_other_and_elect_one_coordinator(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    creds = await asyncio.to_thread(
        _household,
        tmp_path,
        gateway,
        HH,
        ["member", "member", "member", "thin"],
        secrets.token_bytes(32),
    )
    lowest = min(c.fingerprint for c in creds if c.role == "member")
    async with clients(creds, gateway) as cs:
        await eventually(
            lambda: all(len(c.discovery.peers) == 3 for c in cs if c.discovery),
            what="everyone sees the 3 others",
        )
        await eventually(
            lambda: _coordinators(cs) == {lowest}, what="all agree on the lowest member fingerprint"
        )
        serving = [c for c in cs if c.server is not None and c.server.serving]
        assert [c.creds.fingerprint for c in serving] == [lowest]
        assert all(c.household_context() is not None for c in cs)

        def active() -> int:
            ctx = cs[0].household_context()
            return ctx.active_devices if ctx is not None and ctx.household_id == HH else 0

        await eventually(lambda: active() == 4, what="the coordinator counts the 4 devices")


async def test_a_hub_wins_and_the_next_one_takes_over_when_it_leaves(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    creds = await asyncio.to_thread(
        _household, tmp_path, gateway, HH, ["member", "member", "hub"], secret
    )
    hub = creds[2]
    async with clients(creds[:2], gateway) as cs:
        verifier = Verifier.from_public_keys([gateway.public])
        async with HouseholdClient(hub, verifier, tick_s=0.2, personalization=lambda: True) as h:
            await eventually(
                lambda: _coordinators([*cs, h]) == {hub.fingerprint}, what="the hub coordinates"
            )
            cs[0].exposed("e-1", "offer-x", "c-x", time.time())
            await eventually(lambda: not cs[0].pending, what="the exposure reached the hub")
        # the hub said goodbye: the lowest member takes over, and the exposure is replayed
        lowest = min(c.fingerprint for c in creds[:2])
        await eventually(lambda: _coordinators(cs) == {lowest}, what="re-elected after the goodbye")
        other = next(c for c in cs if c is not cs[0])
        hold = await eventually(other.hold, what="the new coordinator answers")
        assert hold.offers == frozenset({"offer-x"})  # no exposure lost
        coordinator = next(c for c in cs if c.server is not None and c.server.serving)
        assert coordinator.server is not None and len(coordinator.server.state.exposures) == 1


async def test_a_spoofed_advert_gets_no_connection_and_is_counted(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    creds = await asyncio.to_thread(_household, tmp_path, gateway, HH, ["member"], secret)
    hits: list[str] = []

    async def trap(request: aiohttp.web.Request) -> aiohttp.web.Response:
        hits.append(request.path)
        return aiohttp.web.json_response({})

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", trap)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rogue = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    # it copies our hint (seen on the network) but cannot make the proof: no secret
    fp = "0" * 32  # the lowest fingerprint there is: it would win any election
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"{fp}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton("127.0.0.1")],
        port=port,
        properties={
            "v": "1",
            "role": "hub",
            "hh": household_hint(secret),
            "fp": fp,
            "proof": "f" * 32,
        },
    )
    try:
        await rogue.async_register_service(info)
        async with clients(creds, gateway) as cs:
            await eventually(
                lambda: cs[0].counters["household_adverts_refused"] >= 1,
                what="the rogue advert refused",
            )
            await eventually(
                lambda: cs[0].connected_to == creds[0].fingerprint, what="coordinates itself"
            )
            assert fp not in cs[0].discovery.peers  # type: ignore[union-attr]
        assert hits == []  # zero connections, zero data
    finally:
        await rogue.async_unregister_service(info)
        await rogue.async_close()
        await runner.cleanup()


async def test_a_spoofed_coordinator_is_refused_and_left_out(tmp_path: Path) -> None:
    """A device with the household's secret (leaked) but a membership another key signed
    advertises as the hub: the handshake refuses it before we send anything but a nonce."""
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    creds = await asyncio.to_thread(_household, tmp_path, gateway, HH, ["member", "member"], secret)
    forger = Signer.generate("k1")  # same kid, another key
    fake = await asyncio.to_thread(
        member, forger, HH, "hh-lan-1-fake", ["hub"], tmp_path / "fake", secret
    )
    async with clients(creds, gateway) as cs, clients([fake], forger) as [rogue]:
        await eventually(
            lambda: all(c.counters["household_coordinators_refused"] >= 1 for c in cs),
            what="both refuse the fake hub",
        )
        lowest = min(c.fingerprint for c in creds)
        await eventually(lambda: _coordinators(cs) == {lowest}, what="they elect among themselves")
        assert rogue.server is not None
        assert set(rogue.server.state.seen) == {"hh-lan-1-fake"}  # only itself got in
        assert rogue.server.counters["household_auth_refused"] == 0  # nobody even tried
        assert rogue.server.state.contributions == {} and not rogue.server.state.exposures


async def test_two_households_on_one_segment_see_nothing_of_each_other(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    a = await asyncio.to_thread(
        _household, tmp_path, gateway, "hh-a", ["member", "member"], secrets.token_bytes(32)
    )
    b = await asyncio.to_thread(
        _household, tmp_path, gateway, "hh-b", ["member", "member"], secrets.token_bytes(32)
    )
    async with clients([*a, *b], gateway) as cs:
        ca, cb = cs[:2], cs[2:]
        ca[0].contribute({"groceries": 5})
        cb[0].contribute({"beauty": 7})
        await eventually(lambda: _coordinators(ca) == {min(c.fingerprint for c in a)})
        await eventually(lambda: _coordinators(cb) == {min(c.fingerprint for c in b)})
        for side, own in ((ca, a), (cb, b)):
            fps = {c.fingerprint for c in own}
            for c in side:
                assert set(c.discovery.peers) <= fps  # type: ignore[union-attr]
                assert c.counters["household_adverts_foreign"] >= 1

        def counts(c: HouseholdClient) -> dict[str, int]:
            ctx = c.household_context()
            return dict(ctx.category_count_24h) if ctx is not None else {}

        await eventually(lambda: counts(ca[1]) and counts(cb[1]), what="both contexts")
        assert counts(ca[1]) == {"groceries": 5}
        assert counts(cb[1]) == {"beauty": 7}


async def test_consent_withdrawn_on_the_phone_removes_its_contribution(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    creds = await asyncio.to_thread(
        _household, tmp_path, gateway, HH, ["hub", "member"], secrets.token_bytes(32)
    )
    consent = {creds[1].membership.device_id: True}
    async with clients(creds, gateway, consent=consent) as [tv, phone]:
        tv.contribute({"media": 2})
        phone.contribute({"groceries": 3})

        def counts() -> dict[str, int]:
            ctx = tv.household_context()
            return dict(ctx.category_count_24h) if ctx else {}

        await eventually(
            lambda: counts() == {"media": 2, "groceries": 3}, what="both contributions"
        )
        consent[phone.creds.membership.device_id] = False  # the person withdraws personalization
        phone.withdraw()
        await eventually(lambda: counts() == {"media": 2}, what="the phone's contribution gone")
        assert (
            tv.server is not None
            and phone.creds.membership.device_id not in tv.server.state.contributions
        )


async def test_handshake_proofs_do_not_transfer(tmp_path: Path) -> None:
    key = Signer.generate("lan")
    other = Signer.generate("lan")
    nonce = handshake.new_nonce()
    proof = handshake.prove(key, "client", nonce, "fp")
    assert handshake.check(key.public.public_key, proof, "client", nonce, "fp")
    assert not handshake.check(other.public.public_key, proof, "client", nonce, "fp")
    assert not handshake.check(key.public.public_key, proof, "server", nonce, "fp")
    assert not handshake.check(key.public.public_key, "%%%", "client", nonce, "fp")
    assert advert_proof(b"s" * 32, "a" * 32, "hub", 1) != advert_proof(
        b"s" * 32, "a" * 32, "member", 1
    )
