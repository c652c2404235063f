"""The member's signed tier and live-sale waves on the device (issue 19), over a fake link:
a verified `MemberStatus` ranks `membership_perk` offers instead of the self-reported tier,
forged or foreign ones are refused and counted; a sealed wave offer is neither shown nor
claimed before its time on the gateway's clock, and a sold-out notice stops claims."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.offers.claims import NotClaimable
from protocol import codec
from protocol.envelopes import Timestamp
from protocol.ids import format_time, new_id, utcnow
from protocol.members import MemberStatus, tier_name
from protocol.signing import Signer
from protocol.waves import GatewayClock, SoldOut, revealed, ticket
from tests.support.builders import offer, signed_bundle
from tests.support.local_device import SURFACE, running_device

ALL = {"analytics": True, "personalization": True, "marketing": True}


def status(signer: Signer, device_id: str, tier: int, version: int) -> bytes:
    now = utcnow()
    body = MemberStatus(
        id=new_id(),
        device_id=device_id,
        version=version,
        tier=tier,
        tier_name=tier_name(tier),
        balance=100 * tier,
        earned=1000 * tier,
        issued_at=now,
        expires_at=now + timedelta(days=1),
    )
    return codec.dumps(signer.sign(body.to_wire()))


def soldout(signer: Signer, cohort: str, version: int, offers: list[str]) -> bytes:
    now = utcnow()
    body = SoldOut(
        id=new_id(),
        cohort=cohort,
        version=version,
        at=now,
        offers=offers,
        expires_at=now + timedelta(hours=1),
    )
    return codec.dumps(signer.sign(body.to_wire()))


async def test_the_signed_tier_ranks_perks_and_a_forged_one_is_refused(tmp_path: Path) -> None:
    async with running_device(tmp_path) as device:
        agent, link = device.agent, device.transports.last
        me = agent.settings.device_id
        await agent.set_consent(ALL)
        perk = offer("perk", type="membership_perk", targeting={"min_tier": 2})
        await link.deliver("offers", signed_bundle(device.signer, [perk]))
        await agent.accept_signals([{"kind": "member_tier", "attrs": {"tier": 3}}])

        async def shown() -> bool:
            return [r.offer.id for r in (await agent.decide(SURFACE, 3)).ranked] == ["perk"]

        assert await shown()  # no signed status yet: the observed tier (3) as before
        await link.deliver("member", status(device.signer, me, 1, 10), me)
        assert agent.counters["member_statuses_accepted"] == 1
        assert not await shown()  # the gateway says silver (1): the self-reported 3 is ignored
        mallory = Signer.generate("k1")  # the pinned key's id, another key
        await link.deliver("member", status(mallory, me, 3, 11), me)
        tampered = codec.decode_object(status(device.signer, me, 1, 12))
        tampered["tier"] = 3
        await link.deliver("member", codec.dumps(tampered), me)
        await link.deliver("member", status(device.signer, "tv-other", 3, 13), me)
        await link.deliver("member", status(device.signer, me, 3, 14), "tv-other")
        assert agent.counters["member_statuses_rejected"] == 4
        await link.deliver("member", status(device.signer, me, 3, 9), me)  # older: ignored
        assert not await shown()
        await link.deliver("member", status(device.signer, me, 2, 15), me)
        assert await shown()  # gold (2) signed: the perk's min_tier 2 is met
        assert agent.status()["member"] == {
            "tier": 2,
            "tier_name": "gold",
            "balance": 200,
            "version": 15,
        }
        await link.deliver("member", b"", me)  # unlinked or erased at the gateway
        assert agent.parts.members.status is None


async def test_a_sealed_wave_opens_on_the_gateway_clock_and_sold_out_stops_claims(
    tmp_path: Path,
) -> None:
    async with running_device(tmp_path) as device:
        agent, link = device.agent, device.transports.last
        await agent.set_consent(ALL)
        wave = utcnow() + timedelta(seconds=30)
        sealed = offer(
            "w1", limited=True, stock=10, starts_at=format_time(wave), not_before=format_time(wave)
        )
        await link.deliver(
            "offers", signed_bundle(device.signer, [sealed, offer("o2", limited=True, stock=5)])
        )
        assert [r.offer.id for r in (await agent.decide(SURFACE, 3)).ranked] == ["o2"]
        with pytest.raises(NotClaimable, match="sealed"):
            await agent.claim("w1")
        # the gateway's clock is 31 s ahead of this device's: a live timestamp says so
        ahead = utcnow() + timedelta(seconds=31)
        stamp = Timestamp(
            version=1, issued_at=ahead, expires_at=ahead + timedelta(minutes=5), keys_version=1
        )
        await link.deliver("timestamp", codec.dumps(device.signer.sign(stamp.to_wire())), "")
        assert agent.counters["clock_samples"] == 1
        ranked = {r.offer.id for r in (await agent.decide(SURFACE, 3)).ranked}
        assert ranked == {"w1", "o2"}  # revealed: the wave has begun on the gateway's clock
        await link.deliver("cohort_soldout", soldout(device.signer, "all", 5, ["w1"]), "all")
        assert [r.offer.id for r in (await agent.decide(SURFACE, 3)).ranked] == ["o2"]
        with pytest.raises(NotClaimable, match="sold out"):
            await agent.claim("w1")
        assert agent.counters["claims_held_sold_out"] == 1
        forged = soldout(Signer.generate("k1"), "all", 6, ["o2"])
        await link.deliver("cohort_soldout", forged, "all")
        await link.deliver(
            "cohort_soldout", soldout(device.signer, "region:x", 7, ["o2"]), "region:x"
        )
        assert agent.counters["soldout_rejected"] == 2
        # stock added back: the next notice no longer lists it
        await link.deliver("cohort_soldout", soldout(device.signer, "all", 8, []), "all")
        assert {r.offer.id for r in (await agent.decide(SURFACE, 3)).ranked} == {"w1", "o2"}


def test_devices_whose_clocks_differ_by_two_seconds_reveal_within_the_transit() -> None:
    """Three devices at -2 s, 0 and +2 s take the same signed times (transit 5..40 ms): each
    reveals the wave, judged on its estimate of the gateway's clock, within 40 ms of it."""
    true0 = datetime(2026, 12, 6, 19, 59, 0, tzinfo=UTC)
    wave = true0 + timedelta(minutes=1)
    transits = [0.040, 0.005, 0.020, 0.012]
    reveals = []
    for skew in (-2.0, 0.0, 2.0):
        clock = GatewayClock()
        for i, transit in enumerate(transits):
            sent = true0 + timedelta(seconds=10 * i)
            clock.observe(sent, sent + timedelta(seconds=transit + skew))
        # step this device's local clock by 1 ms until it reveals
        local = true0 + timedelta(seconds=55 + skew)
        while not revealed(wave, clock.now(local)):
            local += timedelta(milliseconds=1)
        reveals.append((local - timedelta(seconds=skew) - wave).total_seconds())
    assert all(0 <= r <= 0.040 for r in reveals), reveals
    assert max(reveals) - min(reveals) < 0.001  # the same best sample on every device


def _notice(signer: Signer, version: int, offers: list[str], admit: dict[str, float]) -> bytes:
    now = utcnow()
    body = SoldOut(
        id=new_id(),
        cohort="all",
        version=version,
        at=now,
        offers=offers,
        admit=admit,
        expires_at=now + timedelta(hours=1),
    )
    return codec.dumps(signer.sign(body.to_wire()))


async def test_a_claim_waits_for_its_admission_and_closes_unsent_when_sold_out(
    tmp_path: Path,
) -> None:
    """Wave offers admitting a share below this device's ticket: its claims are stored and
    wait (nothing sent); a signed notice growing one share sends that claim; a notice listing
    the other sold out closes it unsent, refused as sold out."""
    async with running_device(tmp_path) as device:
        agent, link = device.agent, device.transports.last
        await agent.set_consent(ALL)
        link.up()
        me = agent.settings.device_id
        below = {oid: ticket(me, oid) / 2 for oid in ("w1", "w2")}
        assert all(share > 0 for share in below.values())  # (ticket 0 is one in 2**64)
        await link.deliver(
            "offers",
            signed_bundle(
                device.signer,
                [offer(oid, limited=True, stock=5, admit=share) for oid, share in below.items()],
            ),
        )
        first, _ = await agent.claim("w1")
        second, _ = await agent.claim("w2")
        assert agent.counters["claims_queued"] == 2
        claim_topic = agent.settings.topics.claim_up(me)
        await agent.claims.tick()
        assert not [p for p in link.published if p[0] == claim_topic]  # none sent yet

        await link.deliver("cohort_soldout", _notice(device.signer, 5, [], {"w1": 1.0}), "all")
        await agent.claims.tick()
        sent = [json.loads(p[1])["offer_id"] for p in link.published if p[0] == claim_topic]
        assert sent == ["w1"]  # admitted: sent; w2 still waits

        await link.deliver("cohort_soldout", _notice(device.signer, 6, ["w2"], {}), "all")
        await agent.claims.tick()
        closed = await agent.claims.get(second["id"])
        assert closed is not None and closed["state"] == "refused"
        assert "sold out" in closed["reason"]
        assert agent.counters["claims_closed_sold_out"] == 1
        sent = [json.loads(p[1])["offer_id"] for p in link.published if p[0] == claim_topic]
        assert sent == ["w1"]  # the closed claim never left the device
        still = await agent.claims.get(first["id"])
        assert still is not None and still["state"] == "pending"  # the gateway answers it
        link.down()  # offline: the shutdown does not wait for the uplink to drain
