"""After a revocation the running gateway signs again, with its fresh key, the current
device-addressed bundles the revoked key signed and sends them (devices dropped those offers:
issue 14), on both backends; a restart finds nothing left to sign again. Real Mosquitto;
devices are births on the broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from cloud_gateway.campaigns.model import CampaignIn
from cloud_gateway.db.devices import get_device
from cloud_gateway.db.pushes import signed_by
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security import keys_ring
from protocol import codec
from protocol.envelopes import State
from simulators.brokers import MosquittoProcess
from tests.support.builders import CAMPAIGN_OFFER as OFFER
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
DEVICES = ["tv-rs-1", "tv-rs-2", "tv-rs-3"]


async def test_device_bundles_of_a_revoked_key_are_signed_again_and_sent(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db, keys_watch_s=0.2)
    root = tmp_path / "root.key"
    keys_ring.init(settings.data_dir, root, settings.topic_root)
    topics = settings.topics
    async with Gateway(settings) as gw:
        leaked = gw.signer.kid
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as dev:
            for device in DEVICES:
                birth = State(device_id=device, status="online", profile="tv", cohorts=["all"])
                await dev.publish(topics.state(device), codec.encode(birth), qos=1)

            async def registered() -> bool:
                return all([await gw.db.call(get_device, d) is not None for d in DEVICES])

            await eventually(registered)
        spec = {
            "name": "two of three",
            "cohorts": ["all"],
            "targeting": {"devices": DEVICES[:2]},
            "offers": [{**OFFER, "id": "rs1"}],
        }
        campaign = await gw.campaigns.create(CampaignIn.model_validate(spec), "op")
        await gw.campaigns.launch(campaign.id, "op")
        assert set(await gw.db.call(signed_by, [leaked])) == {campaign.id}
        assert sorted((await gw.db.call(signed_by, [leaked]))[campaign.id]) == DEVICES[:2]
        assert await gw.db.call(signed_by, ["gw-other"]) == {}

        await asyncio.to_thread(keys_ring.retire, settings.data_dir, root, leaked, revoke=True)
        await eventually(lambda: gw.counters["device_bundles_resigned"] == 2, 10)
        assert gw.signer.kid != leaked
        assert await gw.db.call(signed_by, [leaked]) == {}
        fresh = await gw.db.call(signed_by, [gw.signer.kid])
        assert sorted(fresh[campaign.id]) == DEVICES[:2]
    async with Gateway(settings) as gw:
        await asyncio.sleep(1)  # the start's pass over the revoked keys: nothing left
        assert gw.counters["device_bundles_resigned"] == 0
