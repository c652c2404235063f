"""Household caps across real agents (TV and phone on fake transports, the household on the
loopback LAN with real mDNS): an offer shown on the TV is held back on the phone; with the
coordinator away the phone keeps to its own caps, and its exposures reach the coordinator when
it is back, once each."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.decide.policy import QuietWindow
from agent.household.client import HouseholdClient
from agent.household.membership import Credentials
from agent.household.state import Exposure, HouseholdCaps, HouseholdState
from protocol.signing import Signer, Verifier
from tests.support.builders import offer, signed_bundle
from tests.support.household import member
from tests.support.local_device import Device, running_device
from tests.support.waiting import eventually

# real mDNS packets and LAN sessions between several agents on loopback: the integration tier
pytestmark = pytest.mark.integration


TV_SURFACE = "tv_home_banner"
PHONE_SURFACE = "phone_app_banner"


def bundle(signer: Signer, offers: list[tuple[str, int]]) -> bytes:
    surfaces = [TV_SURFACE, PHONE_SURFACE]
    made = [offer(oid, discount=0.2, priority=p, surfaces=surfaces) for oid, p in offers]
    return signed_bundle(signer, made)


@contextlib.asynccontextmanager
async def joined(
    device: Device, creds: Credentials, gateway: Signer
) -> AsyncIterator[HouseholdClient]:
    verifier = Verifier.from_public_keys([gateway.public])
    async with HouseholdClient(creds, verifier, tick_s=0.2) as client:
        device.agent.attach_household(client)
        try:
            yield client
        finally:
            device.agent.attach_household(None)


async def top(device: Device, surface: str) -> list[str]:
    return [r.offer.id for r in await device.agent.rank(surface, limit=3)]


async def test_caps_hold_across_tv_and_phone_and_reconcile_after_an_outage(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    tv_creds = await asyncio.to_thread(
        member, gateway, "hh-caps", "tv-1", ["hub"], tmp_path / "lan-tv", secret
    )
    phone_creds = await asyncio.to_thread(
        member, gateway, "hh-caps", "phone-1", ["member"], tmp_path / "lan-phone", secret
    )
    for folder in ("tv", "phone"):
        await asyncio.to_thread((tmp_path / folder).mkdir)
    async with (
        running_device(tmp_path / "tv", profile="tv") as tv,
        running_device(tmp_path / "phone", profile="phone") as phone,
    ):
        for device in (tv, phone):
            await device.agent.set_consent(
                {"analytics": True, "personalization": True, "marketing": True}
            )
            await device.transports.last.deliver(
                "offers", bundle(device.signer, [("big", 90), ("small", 10)])
            )
        async with joined(phone, phone_creds, gateway) as phone_lan:
            async with joined(tv, tv_creds, gateway) as tv_lan:
                await eventually(
                    lambda: phone_lan.connected_to == tv_creds.fingerprint == tv_lan.connected_to,
                    what="both sessions with the TV (the hub)",
                )
                assert (await top(tv, TV_SURFACE))[0] == "big"
                await tv.agent.record_outcome("big", "impression", TV_SURFACE)
                # the phone asks before it shows: the TV showed "big", so the phone does not
                assert await top(phone, PHONE_SURFACE) == ["small"]
                # ... and says why, to the marketer too (issue 18): the household's caps
                tally = phone.agent.parts.decisions.explanations
                decision = await phone.agent.decide(PHONE_SURFACE, 3, explain=True)
                assert ("big", "household_cap") in decision.filtered
                assert tally.counts["c-big"]["household_cap"] == 2
                assert "stock" not in tally.counts["c-big"]
            # the TV left: the phone takes over with the household's log it kept
            await eventually(lambda: phone_lan.connected_to == phone_creds.fingerprint)
            assert await top(phone, PHONE_SURFACE) == ["small"]  # the TV's exposure survived
            await phone.agent.record_outcome("small", "impression", PHONE_SURFACE)
            # the TV is back (a new process, an empty state): every exposure reaches it, once
            async with joined(tv, tv_creds, gateway) as tv_lan:
                await eventually(lambda: phone_lan.connected_to == tv_creds.fingerprint)
                server = tv_lan.server
                assert server is not None
                await eventually(lambda: len(server.state.exposures) == 2, what="both exposures")
                await phone_lan.sync()
                await tv_lan.sync()
                assert len(server.state.exposures) == 2  # replays do not double count
                assert not phone_lan.pending
                # the TV may not show "small" (the phone did), the phone not "big" (the TV did)
                assert "small" not in await top(tv, TV_SURFACE)
                assert "big" not in await top(phone, PHONE_SURFACE)
                # the household's day cap is reached: nothing shows, and every campaign the
                # phone could have shown is counted as held by the household's caps
                server.state.caps = HouseholdCaps(per_day=2)
                held_before = tally.counts["c-small"].get("household_cap", 0)
                decision = await phone.agent.decide(PHONE_SURFACE, 3)
                assert decision.ranked == []
                assert decision.filtered == [("*", "household_day_cap")]
                assert tally.counts["c-small"]["household_cap"] == held_before + 1


async def test_without_a_coordinator_a_device_keeps_its_own_caps_and_reconciles_later(
    tmp_path: Path,
) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    speaker_creds = await asyncio.to_thread(
        member, gateway, "hh-away", "speaker-1", ["thin"], tmp_path / "lan-s", secret
    )
    hub_creds = await asyncio.to_thread(
        member, gateway, "hh-away", "hub-1", ["hub"], tmp_path / "lan-h", secret
    )
    await asyncio.to_thread((tmp_path / "tv").mkdir)
    async with running_device(tmp_path / "tv", profile="tv") as device:
        await device.agent.set_consent(
            {"analytics": True, "personalization": True, "marketing": True}
        )
        await device.transports.last.deliver("offers", bundle(device.signer, [("big", 90)]))
        async with joined(device, speaker_creds, gateway) as lan:
            assert await lan.hold() is None  # nobody to ask: its own caps only
            assert await top(device, TV_SURFACE) == ["big"]
            await device.agent.record_outcome("big", "impression", TV_SURFACE)
            assert list(lan.pending) and lan.counters["household_sessions"] == 0
            verifier = Verifier.from_public_keys([gateway.public])
            async with HouseholdClient(hub_creds, verifier, tick_s=0.2) as hub:
                await eventually(lambda: not lan.pending, what="the exposure reconciled")
                assert hub.server is not None
                [exposure] = hub.server.state.exposures.values()
                assert (exposure.offer_id, exposure.device_id) == ("big", "speaker-1")
                await lan.sync()
                assert len(hub.server.state.exposures) == 1


def test_household_caps_policy() -> None:
    state = HouseholdState("hh", HouseholdCaps(offer_window_s=3600, per_day=3))
    now = 1_800_000_000.0
    state.record([Exposure("e1", "o1", "c1", "tv", now - 10)], now)
    assert state.hold("phone", now).offers == {"o1"}
    assert state.hold("tv", now).offers == frozenset()  # its own caps count its own
    assert state.hold("phone", now + 3600).offers == frozenset()  # the window passed
    assert state.record([Exposure("e1", "o1", "c1", "tv", now - 10)], now) == 0  # idempotent
    state.record(
        [Exposure("e2", "o2", "c2", "tv", now), Exposure("e3", "o3", "c3", "tv", now)], now
    )
    held = state.hold("phone", now)
    assert held.reason == "household_day_cap" and held.until is not None and held.until > now
    quiet = HouseholdState("hh", HouseholdCaps(quiet=(QuietWindow(0, 24 * 60 - 1),)))
    assert quiet.hold("tv", now).reason == "household_quiet"
