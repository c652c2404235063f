"""Pushes owed by a campaign change are made once across workers: two gateways on one
PostgreSQL that both find the same stored push markers (both starting after a crash) push each
device's bundle once. Real Mosquitto and PostgreSQL, gateways in this process."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from pathlib import Path

import aiomqtt

from cloud_gateway.campaigns.model import CampaignIn, transition
from cloud_gateway.campaigns.pending import Owed
from cloud_gateway.db.campaigns import change_campaign, pending
from cloud_gateway.db.devices import get_device
from cloud_gateway.db.open import open_session
from cloud_gateway.runtime.gateway import Gateway
from protocol import codec
from protocol.envelopes import State
from protocol.ids import utcnow
from simulators.brokers import MosquittoProcess
from tests.support import waiting
from tests.support.builders import CAMPAIGN_OFFER as OFFER
from tests.support.gateway_world import gateway_settings

DEVICES = [f"tv-settle-{i:03d}" for i in range(60)]
eventually = partial(waiting.eventually, timeout=30.0)


async def test_two_workers_finding_the_same_push_markers_push_each_bundle_once(
    mosquitto: MosquittoProcess, tmp_path: Path, postgres_url: str
) -> None:
    first = gateway_settings(tmp_path / "a", mosquitto, db=postgres_url)
    second = first.model_copy(
        update={"data_dir": tmp_path / "b" / "gw", "client_id": f"{first.client_id}-b"}
    )
    topics = first.topics
    async with Gateway(first) as gw:
        campaign = await gw.campaigns.create(
            CampaignIn.model_validate(
                {
                    "name": "per device",
                    "cohorts": ["all"],
                    "targeting": {"devices": DEVICES},
                    "offers": [{**OFFER, "id": "s1"}],
                }
            ),
            "op",
        )
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as dev:
            for device in DEVICES:
                birth = State(device_id=device, status="online", profile="tv", cohorts=["all"])
                await dev.publish(topics.state(device), codec.encode(birth), qos=1)

            async def registered() -> bool:
                return all([await gw.db.call(get_device, d) is not None for d in DEVICES])

            await eventually(registered)
    # A launch committed with the push it owes, then the process died before pushing.
    store = open_session(first.data_dir, postgres_url)
    now = utcnow()
    change_campaign(
        store,
        transition(campaign, "launch", now).doc(),
        who="op",
        action="campaign.launch",
        detail={"from": "draft", "to": "live"},
        at=now,
        owed=[Owed("device_launch", campaign.id)],
    )
    store.close()

    received: dict[str, int] = {}
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.subscribe(f"{topics.root}/dev/+/down/offers", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                if message.payload:
                    device = message.topic.value.split("/")[-3]
                    received[device] = received.get(device, 0) + 1

        collector = asyncio.create_task(collect(), name="settle-inbox")
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Both workers start together and both find the marker.
                workers = await asyncio.gather(
                    stack.enter_async_context(Gateway(first)),
                    stack.enter_async_context(Gateway(second)),
                )

                async def settled() -> bool:
                    return not await workers[0].db.call(pending) and len(received) == len(DEVICES)

                await eventually(settled)
                await asyncio.sleep(2.0)  # a second push, if any, would arrive by now
                sent = [w.counters["device_bundles_sent"] for w in workers]
        finally:
            collector.cancel()
    assert received == dict.fromkeys(DEVICES, 1), {d: n for d, n in received.items() if n != 1}
    assert sum(sent) == len(DEVICES), sent
