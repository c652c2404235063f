"""An agent with a LAN address and a membership grant joins its household on start: it
advertises, coordinates (alone), and its decisions ask the household's caps; without the LAN
address it stays alone. A thin agent that joins ranks through the coordinator."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import timedelta
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.household.membership import load_key, write_membership
from agent.household.state import HouseholdCaps
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import PolicyDocument, PolicyRules, TrustFile
from protocol.household import MemberRole
from protocol.ids import new_id, utcnow
from protocol.signing import Signer
from simulators.household_lan import membership
from tests.support.builders import unpaced
from tests.support.fake_transport import FakeTransports
from tests.support.local_device import SURFACE, Device
from tests.support.waiting import eventually

# real mDNS packets and LAN sessions between several agents on loopback: the integration tier
pytestmark = pytest.mark.integration


OFFERS = [("low", 0.05, 10), ("high", 0.5, 90), ("deal", 0.6, 30)]


def _prepare(
    tmp_path: Path,
    gateway: Signer,
    device_id: str = "tv-join",
    role: MemberRole = "member",
    secret: bytes | None = None,
) -> Path:
    data = tmp_path / "data"
    key = load_key(data)
    grant = membership(
        gateway, "hh-join", device_id, key, [role], secret or secrets.token_bytes(32)
    )
    write_membership(data, grant)
    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[gateway.public], topic_root="tin/v1")))
    return trust


async def test_an_agent_with_a_grant_joins_and_coordinates(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    trust = await asyncio.to_thread(_prepare, tmp_path, gateway)
    for lan_host, joins in ((None, False), ("127.0.0.1", True)):
        settings = load_settings(
            profile="tv",
            device_id="tv-join",
            broker="mqtt://127.0.0.1:9",
            data_dir=tmp_path / "data",
            trust=trust,
            overrides={"topic_root": "tin/v1", "lan_host": lan_host, "decisions": unpaced()},
            environ={},
        )
        async with Agent(settings, transport=FakeTransports()) as agent:
            assert (agent.household is not None) == joins
            if agent.household is None:
                assert agent.decisions.household is None
                continue
            lan = agent.household
            assert agent.decisions.household is lan
            assert await lan.wait_connected(10.0)  # alone: it coordinates
            assert lan.connected_to == lan.creds.fingerprint
            assert await agent.decisions.household_hold() is not None
            assert agent.counters["household_sessions"] >= 1
            # its contribution follows its personalization consent
            everything = {"analytics": True, "personalization": True, "marketing": True}
            await agent.set_consent(everything)
            signal = {"kind": "search", "attrs": {"category": "groceries", "query_len": 3}}
            await agent.accept_signals([signal])
            await lan.sync()
            assert lan.server is not None
            shared = lan.server.state.contributions["tv-join"]
            assert shared.counts == {"groceries": 1}
            await agent.set_consent({**everything, "personalization": False})
            await lan.sync()
            assert "tv-join" not in lan.server.state.contributions
        assert agent.household is None  # closed with the agent (its goodbye sent)


async def test_a_thin_agent_that_joins_ranks_through_the_coordinator(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    members: dict[str, tuple[str, MemberRole]] = {
        "hub-join": ("hub", "hub"),
        "spk-join": ("tv", "thin"),
    }
    devices: dict[str, Device] = {}
    try:
        for device_id, (profile, role) in members.items():
            folder = tmp_path / device_id
            trust = await asyncio.to_thread(_prepare, folder, gateway, device_id, role, secret)
            settings = load_settings(
                profile=profile,
                device_id=device_id,
                broker="mqtt://127.0.0.1:9",
                data_dir=folder / "data",
                trust=trust,
                overrides={
                    "topic_root": "tin/v1",
                    "lan_host": "127.0.0.1",
                    "ranking": "thin" if role == "thin" else "local",
                    "decisions": unpaced(),  # not the shipped quiet hours: any hour of the day
                },
                environ={},
            )
            transports = FakeTransports()
            agent = Agent(settings, transport=transports)
            await agent.__aenter__()
            devices[device_id] = Device(agent, transports, gateway)
        hub, speaker = devices["hub-join"].agent, devices["spk-join"]
        thin = speaker.agent
        assert thin.model is None and hub.model is not None
        assert hub.household is not None and thin.household is not None
        assert thin.household.server is None  # a thin member serves nothing
        assert await thin.household.wait_connected(10.0)
        assert thin.household.connected_to == hub.household.creds.fingerprint
        await thin.set_consent({"analytics": True, "personalization": True, "marketing": True})
        await speaker.transports.last.deliver("offers", speaker.bundle(OFFERS))
        decision = await thin.decide(SURFACE, 3)
        assert decision.model_version == hub.model_version
        assert [r.reasons[0] for r in decision.ranked] == [f"remote:v{hub.model_version}"] * 3
        assert thin.counters["remote_ranked"] == 1
        assert hub.counters["household_ranked"] == 1
    finally:
        for device in devices.values():
            await device.agent.close()


async def test_the_clouds_household_caps_rule_the_home_through_its_coordinator(
    tmp_path: Path,
) -> None:
    """A signed policy with a household section reaches the hub (its cohort `profile:hub`); the
    hub, coordinating, enforces it over the TV: the same-offer window, the household's daily
    cap, its quiet hours, each in force as soon as the document is taken."""
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    devices: dict[str, Device] = {}
    try:
        homes: list[tuple[str, str, MemberRole]] = [
            ("hub-caps", "hub", "hub"),
            ("tv-caps", "tv", "member"),
        ]
        for device_id, profile, role in homes:
            folder = tmp_path / device_id
            trust = await asyncio.to_thread(_prepare, folder, gateway, device_id, role, secret)
            settings = load_settings(
                profile=profile,
                device_id=device_id,
                broker="mqtt://127.0.0.1:9",
                data_dir=folder / "data",
                trust=trust,
                overrides={
                    "topic_root": "tin/v1",
                    "lan_host": "127.0.0.1",
                    "decisions": unpaced(),
                },
                environ={},
            )
            transports = FakeTransports()
            agent = Agent(settings, transport=transports)
            await agent.__aenter__()
            devices[device_id] = Device(agent, transports, gateway)
        hub, tv = devices["hub-caps"], devices["tv-caps"]
        assert hub.agent.household is not None and tv.agent.household is not None
        server = hub.agent.household.server
        assert server is not None
        tv_lan, hub_fp = tv.agent.household, hub.agent.household.creds.fingerprint
        await eventually(lambda: tv_lan.connected_to == hub_fp, what="the session with the hub")
        await tv.agent.set_consent({"analytics": True, "personalization": False, "marketing": True})
        await tv.transports.last.deliver("offers", tv.bundle(OFFERS))

        async def policy(version: int, household: dict[str, object]) -> None:
            now = utcnow()
            document = PolicyDocument(
                id=new_id(),
                cohort="profile:hub",
                version=version,
                issued_at=now,
                expires_at=now + timedelta(days=1),
                rules=PolicyRules.model_validate({"household": household}),
            )
            payload = codec.dumps(gateway.sign(document.to_wire()))
            await hub.transports.last.deliver("cohort_policy", payload, "profile:hub")
            assert hub.agent.status()["policy"]["version"] == version

        # the hub showed "high": under the default window (4 h) the TV may not show it
        await hub.agent.household.record_exposure("exp-hub-1", "high", "c-high", time.time())
        hold = await tv.agent.decisions.household_hold()
        assert hold is not None and hold.offers == frozenset({"high"})
        # no household section: the defaults, in the hub's local time (Asia/Shanghai)
        assert server.state.caps == HouseholdCaps(utc_offset_s=8 * 3600.0)
        # the cloud narrows the window to nothing: the TV may show it at once
        await policy(2, {"offer_window_s": 0})
        hold = await tv.agent.decisions.household_hold()
        assert hold is not None and hold.offers == frozenset() and hold.reason is None
        assert "high" in [r.offer.id for r in (await tv.agent.decide(SURFACE, 3)).ranked]
        # a household day cap of one: the hub's impression used it, nothing shows on the TV
        await policy(3, {"offer_window_s": 0, "per_day": 1})
        decision = await tv.agent.decide(SURFACE, 3)
        assert decision.ranked == []
        assert decision.filtered == [("*", "household_day_cap")]
        # household quiet hours all day (the day cap lifted: quiet hours hold by themselves)
        always = [{"start": "00:00", "end": "12:00"}, {"start": "12:00", "end": "00:00"}]
        await policy(4, {"quiet_hours": always})
        hold = await tv.agent.decisions.household_hold()
        assert hold is not None and hold.reason == "household_quiet"
        assert server.state.caps.per_day == HouseholdCaps().per_day
        assert server.state.caps.offer_window_s == HouseholdCaps().offer_window_s
    finally:
        for device in devices.values():
            await device.agent.close()
