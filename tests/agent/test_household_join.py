"""An agent with a LAN address and a membership grant joins its household on start: it
advertises, coordinates (alone), and its decisions ask the household's caps; without the LAN
address it stays alone."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from agent.config import load_settings
from agent.household.membership import load_key, write_membership
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.signing import Signer
from tests.support.fake_transport import FakeTransports
from tests.support.household import membership


def _prepare(tmp_path: Path, gateway: Signer) -> Path:
    data = tmp_path / "data"
    key = load_key(data)
    grant = membership(gateway, "hh-join", "tv-join", key, ["member"], secrets.token_bytes(32))
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
