"""Issue 14: keys with a life on a real broker, a real gateway and real agents in this
process. Rotation while some agents are online and some offline (they catch up on return,
two rotations and a root rotation later), emergency revocation of a leaked key, and a frozen
view (old retained messages only) reported as stale trust."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentSettings, load_settings
from agent.offers.claims import NotClaimable
from agent.runtime.agent import Agent
from cloud_gateway.campaigns.model import CampaignIn
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.audit import audit_log
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security import keys_ring
from protocol import codec
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from simulators.brokers import MosquittoProcess
from tests.support.builders import ALL, offer
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

OFFER = {
    "type": "replenishment",
    "title": "Filter -20%",
    "category": "purifier_filter",
    "discount": 0.2,
    "surfaces": ["tv_home_banner"],
}


@asynccontextmanager
async def agents(
    gw: GatewaySettings, tmp_path: Path, broker: MosquittoProcess, devices: list[str]
) -> AsyncIterator[dict[str, Agent]]:
    """Started agents of the gateway's trust file, stopped on leaving."""
    async with AsyncExitStack() as stack:
        running: dict[str, Agent] = {}
        for device in devices:
            settings = agent_settings_of(gw, tmp_path, broker, device)
            running[device] = await stack.enter_async_context(Agent(settings))
        for agent in running.values():
            assert await agent.wait_connected(20)
        yield running


def agent_settings_of(
    gw: GatewaySettings, tmp_path: Path, broker: MosquittoProcess, device: str
) -> AgentSettings:
    """An agent of the gateway's trust file, whether that gateway runs now or not."""
    return load_settings(
        profile="tv",
        device_id=device,
        broker=broker.url,
        data_dir=tmp_path / device,
        api_port=0,
        trust=gw.data_dir / "trust.json",
        overrides={"uplink": {"batch_max_age_s": 0.05}, "topic_root": gw.topic_root},
        environ={},
    )


def keys_version(agent: Agent) -> int | None:
    version = agent.parts.trust.to_json()["keys_version"]
    return version if isinstance(version, int) else None


async def launch(gw: Gateway, offer_id: str) -> None:
    spec = {"name": offer_id, "cohorts": ["profile:tv"], "offers": [{**OFFER, "id": offer_id}]}
    campaign = await gw.campaigns.create(CampaignIn.model_validate(spec), "test")
    await gw.campaigns.launch(campaign.id, "test")


def counted(agent: Agent, counter: str, at_least: int) -> bool:
    return agent.counters[counter] >= at_least


def holds(agent: Agent, offer_id: str) -> bool:
    return agent.parts.offers.get(offer_id) is not None


async def test_rotations_reach_online_agents_and_offline_ones_catch_up(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    settings = gateway_settings(tmp_path, mosquitto)
    root = tmp_path / "operator" / "root.key"  # apart from the gateway's data dir
    root.parent.mkdir()
    keys_ring.init(settings.data_dir, root, settings.topic_root)
    online = [f"tv-on-{i:04d}" for i in range(20)]
    offline = [f"tv-off-{i:04d}" for i in range(5)]

    async with (
        Gateway(settings) as gw,
        agents(settings, tmp_path, mosquitto, online + offline) as fleet,
    ):
        await eventually(lambda: all(keys_version(a) == 1 for a in fleet.values()))
        await launch(gw, "before")
        await eventually(lambda: all(holds(a, "before") for a in fleet.values()))
    # the offline ones stay away from here on; the online ones live through every change
    async with agents(settings, tmp_path, mosquitto, online) as fleet:
        for step in range(2):  # two rotations: announce, use, retire
            old = keys_ring.read_ring(settings.data_dir)
            assert old is not None
            announced, name = old.version + 1, f"rotated-{step}"
            previous = old.active()
            assert previous is not None
            new = keys_ring.add(settings.data_dir, root)  # announced
            async with Gateway(settings):
                await eventually(
                    lambda: all(keys_version(a) == announced for a in fleet.values())  # noqa: B023
                )
            keys_ring.activate(settings.data_dir, new)  # used
            async with Gateway(settings) as gw:
                await launch(gw, name)
                await eventually(lambda: all(holds(a, name) for a in fleet.values()))  # noqa: B023
            keys_ring.retire(settings.data_dir, root, previous)  # retired
        new_root = tmp_path / "operator" / "root-2.key"
        keys_ring.rotate_root(settings.data_dir, root, new_root)
        async with Gateway(settings) as gw:
            ring = keys_ring.read_ring(settings.data_dir)
            assert ring is not None
            await eventually(lambda: all(keys_version(a) == ring.version for a in fleet.values()))
            await launch(gw, "after")
            await eventually(lambda: all(holds(a, "after") for a in fleet.values()))
            for agent in fleet.values():
                assert agent.counters["bundles_rejected"] == 0  # nothing refused that was good
                assert agent.parts.trust.to_json()["root_generation"] == 2
            # the offline ones return: the retained list (root-signed, through the root change)
            async with agents(settings, tmp_path, mosquitto, offline) as back:
                await eventually(
                    lambda: all(keys_version(a) == ring.version for a in back.values())
                )
                await eventually(lambda: all(holds(a, "after") for a in back.values()))
                for agent in back.values():
                    assert agent.parts.trust.to_json()["root_generation"] == 2
                    assert agent.parts.trust.stale() is None
    assert not any(p.name.startswith("root") for p in settings.data_dir.rglob("*"))


def attack(signer: Signer, device: str) -> dict[str, dict[str, Any]]:
    """A bundle, a command and a manifest for `device`, signed with a leaked key."""
    now = utcnow()
    later = format_time(now + timedelta(hours=1))
    bundle = {
        "v": 1,
        "id": new_id(),
        "issued_at": format_time(now),
        "expires_at": later,
        "offers": [offer("evil", surfaces=["tv_home_banner"])],
    }
    command = {
        "v": 1,
        "id": new_id(),
        "device_id": device,
        "kind": "forget",
        "issued_at": format_time(now),
        "expires_at": later,
    }
    manifest = {
        "v": 1,
        "name": "evil",
        "version": 999,
        "profiles": ["tv"],
        "sha256": "0" * 64,
        "size": 10,
        "feature_spec": {"features": [{"name": "bias"}]},
        "created_at": format_time(now),
        "expires_at": later,
    }
    return {
        "bundle": signer.sign(bundle),
        "command": signer.sign(command),
        "manifest": signer.sign(manifest),
    }


async def test_a_revoked_key_is_refused_everywhere_and_what_it_signed_is_dropped(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    settings = gateway_settings(tmp_path, mosquitto)
    root = tmp_path / "operator" / "root.key"
    root.parent.mkdir()
    keys_ring.init(settings.data_dir, root, settings.topic_root)
    ring = keys_ring.read_ring(settings.data_dir)
    assert ring is not None
    leaked_kid = ring.active()
    assert leaked_kid is not None
    leaked = keys_ring.online_key(settings.data_dir, leaked_kid)  # the attacker's copy
    devices = ["tv-rv-0001", "tv-rv-0002", "tv-rv-0003"]
    topics = settings.topics
    async with agents(settings, tmp_path, mosquitto, devices) as fleet:
        async with Gateway(settings) as gw:
            await launch(gw, "signed-by-leaked")
            await eventually(lambda: all(holds(a, "signed-by-leaked") for a in fleet.values()))
        keys_ring.retire(settings.data_dir, root, leaked_kid, revoke=True)
        async with Gateway(settings) as gw:
            await eventually(lambda: all(keys_version(a) == 2 for a in fleet.values()))
            # what the leaked key signed left every device; the gateway signed it again with
            # the fresh key, and that is taken
            for agent in fleet.values():
                await eventually(partial(counted, agent, "offers_dropped_revoked", 1))
            await eventually(lambda: all(holds(a, "signed-by-leaked") for a in fleet.values()))
            for device, agent in fleet.items():
                forged = attack(leaked, device)
                rejected = agent.counters["bundles_rejected"]
                await gw.parts.outlet.publish(
                    topics.offers(device), codec.dumps(forged["bundle"]), False
                )
                await gw.parts.outlet.publish(
                    topics.cmd(device), codec.dumps(forged["command"]), False
                )
                await gw.parts.outlet.publish(
                    topics.model_manifest("tv"), codec.dumps(forged["manifest"]), False
                )
                await eventually(partial(counted, agent, "bundles_rejected", rejected + 1))
                await eventually(partial(counted, agent, "commands_bad", 1))
                await eventually(partial(counted, agent, "model_update_refused_bad_signature", 1))
                assert not holds(agent, "evil")
                assert agent.counters["signals_forgotten"] == 0
            log = await gw.db.call(audit_log, 100)
            revoked = [e for e in log if e["action"] == "keys.revoke"]
            assert [e["target"] for e in revoked] == [leaked_kid]  # who and when, once
            assert revoked[0]["who"]
            assert {"keys.init", "keys.add"} <= {e["action"] for e in log}
            await launch(gw, "after-revocation")  # signed by the fresh key: taken
            await eventually(lambda: all(holds(a, "after-revocation") for a in fleet.values()))


async def test_a_frozen_view_is_reported_as_stale_trust_and_stops_claims(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, timestamp_ttl_s=1.5)
    root = tmp_path / "operator" / "root.key"
    root.parent.mkdir()
    keys_ring.init(settings.data_dir, root, settings.topic_root)
    async with agents(settings, tmp_path, mosquitto, ["tv-fz-0001"]) as fleet:
        agent = fleet["tv-fz-0001"]
        await agent.set_consent(ALL)
        async with Gateway(settings) as gw:
            spec = {
                "name": "limited",
                "cohorts": ["profile:tv"],
                "offers": [{**OFFER, "id": "few", "limited": True, "stock": 10}],
            }
            campaign = await gw.campaigns.create(CampaignIn.model_validate(spec), "test")
            await gw.campaigns.launch(campaign.id, "test")
            await eventually(lambda: holds(agent, "few"))
            assert agent.parts.trust.stale() is None
        # the gateway is gone; the broker keeps only its old retained messages
        await eventually(lambda: agent.parts.trust.stale() == "timestamp_expired", timeout=10)
        with pytest.raises(NotClaimable, match="stale"):
            await agent.parts.claims.claim("few", utcnow())
        status = agent.status()
        assert status["trust"]["stale_trust"] == "timestamp_expired"
    # a restart: the broker replays yesterday's timestamp, which changes nothing
    async with agents(settings, tmp_path, mosquitto, ["tv-fz-0001"]) as fleet:
        agent = fleet["tv-fz-0001"]
        await eventually(lambda: agent.counters["timestamps_rejected"] >= 1)
        assert agent.parts.trust.stale() == "timestamp_expired"
        assert agent.counters["claims_refused_stale"] == 0
