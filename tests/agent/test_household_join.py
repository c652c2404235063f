"""An agent with a LAN address and a membership grant joins its household on start: it
advertises, coordinates (alone), and its decisions ask the household's caps; without the LAN
address it stays alone. A thin agent that joins ranks through the coordinator."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.household.membership import load_key, write_membership
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.household import MemberRole
from protocol.signing import Signer
from simulators.household_lan import membership
from tests.support.fake_transport import FakeTransports
from tests.support.local_device import SURFACE, Device

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
            overrides={"topic_root": "tin/v1", "lan_host": lan_host},
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
