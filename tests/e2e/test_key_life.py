"""Issue 14: keys with a life on a real broker, a real gateway and real agents in this
process. Rotation while some agents are online and some offline (they catch up on return,
two rotations and a root rotation later), emergency revocation of a leaked key, and a frozen
view (old retained messages only) reported as stale trust."""

from __future__ import annotations

import asyncio
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
from tests.support.mtls import mtls_fleet
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

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


def forge_bundle(signer: Signer, offer_id: str) -> bytes:
    """A device bundle offering `offer_id`, signed by `signer` (a retired or leaked key)."""
    now = utcnow()
    bundle = {
        "v": 1,
        "id": new_id(),
        "issued_at": format_time(now),
        "expires_at": format_time(now + timedelta(hours=1)),
        "offers": [offer(offer_id, surfaces=["tv_home_banner"])],
    }
    return codec.dumps(signer.sign(bundle))


async def test_rotations_over_mutual_tls_reach_online_agents_and_offline_ones_catch_up(
    tmp_path: Path,
) -> None:
    """Two rotations (announce, use, retire) and a root rotation while one gateway runs
    throughout: it switches its key and publishes each list with no restart. 20 agents stay
    online over mutual TLS; 5 are away through all of it and catch up on return."""
    online = [f"tv-on-{i:04d}" for i in range(20)]
    offline = [f"tv-off-{i:04d}" for i in range(5)]
    with mtls_fleet(tmp_path) as tls:
        settings = tls.gateway_settings(keys_watch_s=0.2)
        root = tmp_path / "operator" / "root.key"  # apart from the gateway's data dir
        root.parent.mkdir()
        keys_ring.init(settings.data_dir, root, settings.topic_root)
        for device in online + offline:
            await asyncio.to_thread(tls.issue_identity, tmp_path / device, device)
        broker = tls.broker
        forged = dict.fromkeys(online, 0)  # bundles each online agent must refuse
        async with Gateway(settings) as gw:
            async with agents(settings, tmp_path, broker, online + offline) as fleet:
                assert all(a.settings.mqtt_cert_file is not None for a in fleet.values())
                await eventually(lambda: all(keys_version(a) == 1 for a in fleet.values()))
                await launch(gw, "before")
                await eventually(lambda: all(holds(a, "before") for a in fleet.values()))
            # the offline ones stay away from here on; the online ones live through it all
            async with agents(settings, tmp_path, broker, online) as fleet:
                for step in range(2):  # two rotations: announce, use, retire
                    old = keys_ring.read_ring(settings.data_dir)
                    assert old is not None
                    previous = old.active()
                    assert previous is not None
                    new = await asyncio.to_thread(keys_ring.add, settings.data_dir, root)
                    await eventually(
                        lambda: all(keys_version(a) == old.version + 1 for a in fleet.values())  # noqa: B023
                    )
                    await asyncio.to_thread(keys_ring.activate, settings.data_dir, new)
                    await eventually(lambda: gw.signer.kid == new, 10)  # noqa: B023
                    name = f"rotated-{step}"
                    await launch(gw, name)
                    await eventually(lambda: all(holds(a, name) for a in fleet.values()))  # noqa: B023
                    retired = await asyncio.to_thread(
                        keys_ring.retire, settings.data_dir, root, previous
                    )
                    await eventually(
                        lambda: all(keys_version(a) == retired for a in fleet.values())  # noqa: B023
                    )
                    # none accepted that should not: the retired key is no longer listed
                    pem = settings.data_dir / "keys" / "retired" / f"{previous}.pem"
                    gone = Signer.from_pem(previous, pem.read_bytes())
                    for device, agent in fleet.items():
                        topic = settings.topics.offers(device)
                        await gw.parts.outlet.publish(topic, forge_bundle(gone, "stale"), False)
                        forged[device] += 1
                        await eventually(
                            partial(counted, agent, "bundles_rejected", forged[device])
                        )
                        assert not holds(agent, "stale")
                new_root = tmp_path / "operator" / "root-2.key"
                await asyncio.to_thread(keys_ring.rotate_root, settings.data_dir, root, new_root)
                ring = keys_ring.read_ring(settings.data_dir)
                assert ring is not None
                await eventually(
                    lambda: all(keys_version(a) == ring.version for a in fleet.values())
                )
                await launch(gw, "after")
                await eventually(lambda: all(holds(a, "after") for a in fleet.values()))
                for device, agent in fleet.items():
                    # nothing refused that was good: only the forged bundles were
                    assert agent.counters["bundles_rejected"] == forged[device]
                    assert agent.counters["keylists_rejected"] == 0
                    assert agent.parts.trust.to_json()["root_generation"] == 2
            # the offline ones return: the retained list (root-signed, through the root change)
            async with agents(settings, tmp_path, broker, offline) as back:
                await eventually(
                    lambda: all(keys_version(a) == ring.version for a in back.values())
                )
                every = ("before", "rotated-0", "rotated-1", "after")
                await eventually(lambda: all(holds(a, o) for a in back.values() for o in every))
                for agent in back.values():
                    assert agent.parts.trust.to_json()["root_generation"] == 2
                    assert agent.parts.trust.stale() is None
                    assert agent.counters["bundles_rejected"] == 0
            assert gw.counters["keys_reloaded"] >= 7  # 2 x (add, activate, retire), root
            assert gw.counters["keys_reload_failed"] == 0
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


async def test_a_revoked_key_is_refused_everywhere_and_what_it_signed_is_sent_again(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    """An emergency revocation of the active key while the gateway runs: it switches to the
    fresh key, devices drop what the leaked key signed (a cohort catalog and device-addressed
    bundles) and get it back signed by the fresh key; the attacker's copies are refused."""
    settings = gateway_settings(tmp_path, mosquitto, keys_watch_s=0.2)
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
    async with (
        agents(settings, tmp_path, mosquitto, devices) as fleet,
        Gateway(settings) as gw,
    ):
        await launch(gw, "signed-by-leaked")
        spec = {
            "name": "for-two",
            "cohorts": ["profile:tv"],
            "targeting": {"devices": devices[:2]},
            "offers": [{**OFFER, "id": "device-addressed"}],
        }
        campaign = await gw.campaigns.create(CampaignIn.model_validate(spec), "test")
        await gw.campaigns.launch(campaign.id, "test")
        both = ("signed-by-leaked", "device-addressed")
        await eventually(lambda: all(holds(fleet[d], o) for d in devices[:2] for o in both))
        await eventually(lambda: all(holds(a, "signed-by-leaked") for a in fleet.values()))
        await asyncio.to_thread(keys_ring.retire, settings.data_dir, root, leaked_kid, revoke=True)
        await eventually(lambda: all(keys_version(a) == 2 for a in fleet.values()))
        assert gw.signer.kid != leaked_kid  # switched with no restart
        # what the leaked key signed left every device; the gateway signed it again with
        # the fresh key (the catalog, and the device bundles), and that is taken
        for device, agent in fleet.items():
            await eventually(partial(counted, agent, "offers_dropped_revoked", 1))
            if device in devices[:2]:
                assert agent.counters["offers_dropped_revoked"] >= 2  # both were dropped
        await eventually(lambda: all(holds(fleet[d], o) for d in devices[:2] for o in both))
        await eventually(lambda: all(holds(a, "signed-by-leaked") for a in fleet.values()))
        assert gw.counters["device_bundles_resigned"] == 2
        assert not holds(fleet[devices[2]], "device-addressed")
        for device, agent in fleet.items():
            forged = attack(leaked, device)
            rejected = agent.counters["bundles_rejected"]
            await gw.parts.outlet.publish(
                topics.offers(device), codec.dumps(forged["bundle"]), False
            )
            await gw.parts.outlet.publish(topics.cmd(device), codec.dumps(forged["command"]), False)
            await gw.parts.outlet.publish(
                topics.model_manifest("tv"), codec.dumps(forged["manifest"]), False
            )
            await eventually(partial(counted, agent, "bundles_rejected", rejected + 1))
            await eventually(partial(counted, agent, "commands_bad", 1))
            await eventually(partial(counted, agent, "model_update_refused_bad_signature", 1))
            assert not holds(agent, "evil")
            assert agent.counters["signals_forgotten"] == 0
        await launch(gw, "after-revocation")  # signed by the fresh key: taken
        await eventually(lambda: all(holds(a, "after-revocation") for a in fleet.values()))
        log = await gw.db.call(audit_log, 100)
        revoked = [e for e in log if e["action"] == "keys.revoke"]
        assert [e["target"] for e in revoked] == [leaked_kid]  # who and when, once
        assert revoked[0]["who"]
        assert {"keys.init", "keys.add"} <= {e["action"] for e in log}
    async with Gateway(settings) as gw:  # a restart signs nothing again: all is fresh
        await asyncio.sleep(1)
        assert gw.counters["device_bundles_resigned"] == 0
        assert (
            len([e for e in await gw.db.call(audit_log, 100) if e["action"] == "keys.revoke"]) == 1
        )


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
