"""The gateway against a real Mosquitto and real HTTP on loopback: store once, ack, campaigns."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.devices import get_device
from cloud_gateway.errors import LinkDown
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.runtime.link import MqttLink
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import (
    ClaimRequest,
    ClaimResult,
    KeyList,
    OfferBundle,
    OutcomeKind,
    TrustFile,
)
from protocol.ids import new_id, utcnow
from protocol.signing import Verifier
from simulators.brokers import MosquittoProcess
from tests.support.builders import make_batch
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def next_json(client: aiomqtt.Client, wait: float = 5.0) -> tuple[str, dict[str, Any]]:
    async with asyncio.timeout(wait):
        message = await anext(client.messages)
    assert isinstance(message.payload, bytes)
    body = json.loads(message.payload)
    if message.topic.value.endswith("/down/ack"):
        # every ack is signed for its device (issue 14); the tests here compare the rest
        assert body.pop("kid") and body.pop("sig") and body.pop("expires_at")
        assert f"/dev/{body.pop('device_id')}/down/ack" in message.topic.value
    return message.topic.value, body


async def no_message(client: aiomqtt.Client, wait: float = 0.3) -> bool:
    try:
        async with asyncio.timeout(wait):
            await anext(client.messages)
    except TimeoutError:
        return True
    return False


async def device_client(
    broker: MosquittoProcess, settings: GatewaySettings, device_id: str
) -> aiomqtt.Client:
    client = aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"{device_id}-{uuid.uuid4().hex[:6]}"
    )
    await client.__aenter__()
    await client.subscribe(settings.topics.ack(device_id), qos=1)
    return client


@pytest.fixture
async def device(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> AsyncIterator[tuple[GatewaySettings, aiomqtt.Client]]:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    client = await device_client(mosquitto, settings, "tv-0001")
    yield settings, client
    await client.__aexit__(None, None, None)


# ---------------------------------------------------------------- ingest


async def test_batch_stored_once_and_acked_each_time_even_across_restart(
    device: tuple[GatewaySettings, aiomqtt.Client],
) -> None:
    settings, client = device
    batch = make_batch("tv-0001", 1, signals=3)
    topic = settings.topics.batch("tv-0001")
    async with Gateway(settings) as gw:
        for _ in range(3):
            await client.publish(topic, codec.encode(batch), qos=1)
            assert await next_json(client) == (
                settings.topics.ack("tv-0001"),
                {"v": 1, "acks": [1]},
            )
        assert gw.counters["batches_stored"] == 1
        assert gw.counters["batches_duplicate"] == 2
    # Published while the gateway is down: its persistent session keeps the message.
    second = make_batch("tv-0001", 2, signals=1)
    await client.publish(topic, codec.encode(second), qos=1)
    async with Gateway(settings) as gw:
        assert (await next_json(client))[1] == {"v": 1, "acks": [2]}
        await client.publish(topic, codec.encode(batch), qos=1)
        assert (await next_json(client))[1] == {"v": 1, "acks": [1]}
        assert gw.counters["batches_duplicate"] == 1
        device_row = await gw.db.call(get_device, "tv-0001")
    assert device_row is not None
    assert (device_row["batches"], device_row["signals_stored"]) == (2, 4)


async def test_hostile_payloads_rejected_counted_and_the_loop_survives(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    topics = settings.topics
    client = await device_client(mosquitto, settings, "evil-01")
    topic = topics.batch("evil-01")
    good = make_batch("evil-01", 5).to_wire()
    hostile = [
        zlib.compress(b"\0" * (100 * 1024 * 1024), 9),  # too_large once inflated
        b"{" + b" " * (5 * 1024 * 1024) + b"}",  # too_large
        b'{"v":1,"a":' + b"[" * 300 + b"]" * 300 + b"}",  # malformed: too deep
        codec.encode_dict({**good, "seq": "five"}),  # invalid
        codec.encode_dict({**good, "v": 9}),  # unsupported_version
        b"\xff\xfe\x00\x01 binary noise",  # malformed
        codec.encode(make_batch("victim-01", 6)),  # wrong_device
    ]
    try:
        async with Gateway(settings) as gw:
            for payload in hostile:
                await client.publish(topic, payload, qos=1)
            await client.publish(f"{topics.root}/dev/evil-01/up/whatever", b"{}", qos=1)
            await client.publish(
                topic, codec.encode(make_batch("evil-01", 5), compress=True), qos=1
            )
            assert (await next_json(client, wait=15))[1] == {"v": 1, "acks": [5]}
            assert await no_message(client)  # nothing hostile was acked
            token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
            async with aiohttp.ClientSession(
                f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
            ) as http:
                stats = await (await http.get("/v1/stats")).json()
                evil = await (await http.get("/v1/devices/evil-01")).json()
                victim = await http.get("/v1/devices/victim-01")
        assert stats["rejected"] == {
            "malformed": 2,
            "non_finite": 0,
            "too_large": 2,
            "invalid": 1,
            "unsupported_version": 1,
            "wrong_device": 1,
            "unknown_topic": 1,
        }
        assert stats["batches_stored"] == 1
        assert (evil["malformed"], evil["batches"]) == (7, 1)
        assert victim.status == 404  # nothing was stored under the device the payload named
    finally:
        await client.__aexit__(None, None, None)


async def test_state_messages_update_the_registry(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    state_topic = settings.topics.state("hub-0042")
    birth = {
        "v": 1,
        "device_id": "hub-0042",
        "status": "online",
        "profile": "hub",
        "agent_version": "0.1.0",
    }
    async with aiomqtt.Client(
        "127.0.0.1", mosquitto.port, identifier=f"hub-{uuid.uuid4().hex[:6]}"
    ) as dev:
        await dev.publish(state_topic, codec.encode_dict(birth), qos=1, retain=True)
        async with Gateway(settings) as gw:  # retained birth arrives on subscribe
            for _ in range(50):
                row = await gw.db.call(get_device, "hub-0042")
                if row and row["status"] == "online":
                    break
                await asyncio.sleep(0.05)
            assert row is not None
            assert (row["status"], row["profile"]) == ("online", "hub")
            await dev.publish(
                state_topic, codec.encode_dict({**birth, "status": "offline"}), qos=1, retain=True
            )
            for _ in range(50):
                row = await gw.db.call(get_device, "hub-0042")
                if row and row["status"] == "offline":
                    break
                await asyncio.sleep(0.05)
            assert row is not None
            assert row["status"] == "offline"


# ---------------------------------------------------------------- HTTP, campaigns, push


OFFER = {
    "id": "filter-20",
    "type": "replenishment",
    "title": "Purifier filter -20%",
    "category": "purifier_filter",
    "price": 129.0,
    "discount": 0.2,
    "surfaces": ["tv_home_banner"],
    "priority": 80,
}


async def test_http_api_campaign_push_pause_and_stats(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    topics = settings.topics
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        base = f"http://127.0.0.1:{gw.http_port}"
        trust = TrustFile.model_validate_json(gw.trust_path.read_text())
        verifier = Verifier.from_public_keys(trust.keys)
        async with aiohttp.ClientSession(base) as anon:
            assert (await anon.get("/healthz")).status == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                resp = await anon.get("/v1/campaigns", headers=headers)
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert resp.content_type == "application/problem+json"
                assert (await resp.json())["status"] == 401

        async with aiohttp.ClientSession(
            base, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            bad = {
                "name": "x",
                "cohorts": ["profile:tv"],
                "offers": [{**OFFER, "price": -1, "discount": 5.0}],
            }
            resp = await http.post("/v1/campaigns", json=bad)
            assert resp.status == 400
            assert resp.content_type == "application/problem+json"
            locs = {e["loc"] for e in (await resp.json())["errors"]}
            assert {"offers.0.price", "offers.0.discount"} <= locs
            resp = await http.post(
                "/v1/campaigns", data=io.BytesIO(b"{" + b" " * (2 * 1024 * 1024) + b"}")
            )
            assert resp.status == 413

            resp = await http.post(
                "/v1/campaigns",
                json={"name": "filters", "cohorts": ["profile:tv"], "offers": [OFFER]},
            )
            assert resp.status == 201
            campaign = await resp.json()
            assert campaign["state"] == "draft"
            assert campaign["offers"][0]["id"] == "filter-20"
            cid = campaign["id"]
            assert (await http.post(f"/v1/campaigns/{cid}/pause")).status == 409
            assert (await http.get("/v1/campaigns/nope")).status == 404

            resp = await http.post(f"/v1/campaigns/{cid}/launch")
            assert resp.status == 200
            assert (await resp.json())["state"] == "live"

            async with aiomqtt.Client(
                "127.0.0.1", mosquitto.port, identifier=f"tv-{uuid.uuid4().hex[:6]}"
            ) as tv:
                await tv.subscribe(topics.cohort_offers("profile:tv"), qos=1)
                await tv.subscribe(topics.keys(), qos=1)
                got = dict([await next_json(tv), await next_json(tv)])
                key_list = got[topics.keys()]
                verifier.verify(key_list)
                assert KeyList.model_validate(key_list).version == 1
                catalog = got[topics.cohort_offers("profile:tv")]
                verifier.verify(catalog)
                bundle = OfferBundle.model_validate(catalog)
                assert bundle.cohort == "profile:tv"
                assert [(o.id, o.campaign_id) for o in bundle.offers] == [("filter-20", cid)]

                resp = await http.post(f"/v1/campaigns/{cid}/pause")
                assert (await resp.json())["state"] == "paused"
                _, catalog = await next_json(tv)
                verifier.verify(catalog)
                paused = OfferBundle.model_validate(catalog)
                assert paused.offers == []
                assert "filter-20" in paused.revokes

            async with aiomqtt.Client(
                "127.0.0.1", mosquitto.port, identifier=f"tv-{uuid.uuid4().hex[:6]}"
            ) as dev:
                await dev.subscribe(topics.ack("tv-0007"), qos=1)
                outcomes: list[tuple[str, str, OutcomeKind]] = [
                    (cid, "filter-20", "impression"),
                    (cid, "filter-20", "impression"),
                    (cid, "filter-20", "click"),
                ]
                batch = make_batch("tv-0007", 1, signals=2, outcomes=outcomes)
                await dev.publish(topics.batch("tv-0007"), codec.encode(batch), qos=1)
                assert (await next_json(dev))[1] == {"v": 1, "acks": [1]}

            stats = await (await http.get(f"/v1/campaigns/{cid}/stats")).json()
            assert (stats["pushed"], stats["impressions"], stats["clicks"]) == (1, 2, 1)
            assert stats["ctr"]["value"] == 0.5

            devices = (await (await http.get("/v1/devices")).json())["devices"]
            assert [d["device_id"] for d in devices] == ["tv-0007"]
            detail = await (await http.get("/v1/devices/tv-0007")).json()
            assert (detail["signals_stored"], detail["outcomes_stored"], detail["batches"]) == (
                2,
                3,
                1,
            )
            export = await (await http.get("/v1/devices/tv-0007/export")).json()
            assert sorted(s["id"] for s in export["signals"]) == sorted(s.id for s in batch.signals)

            gateway_stats = await (await http.get("/v1/stats")).json()
            assert gateway_stats["bundles_pushed"] == 2
            assert gateway_stats["offers_pushed"] == 1
            assert gateway_stats["uplink_queued_messages"] == 0  # all handled: the queues are
            assert gateway_stats["uplink_queued_bytes"] == 0  # empty again
            assert gateway_stats["ingest_waiting_batches"] == 0
            metrics = await (await http.get("/metrics")).text()
            assert "edgemart_gateway_batches_stored_total 1.0" in metrics
            assert "edgemart_gateway_uplink_queued_bytes 0.0" in metrics
            doc = await (await http.get("/openapi.json")).json()
            assert doc["openapi"].startswith("3.1")
            assert "/v1/campaigns/{id}/launch" in doc["paths"]
            assert "CampaignIn" in doc["components"]["schemas"]
        audit = await gw.db.call(audit_log)
        assert [a["action"] for a in reversed(audit)] == [
            "token.create",
            "campaign.create",
            "campaign.launch",
            "campaign.pause",
        ]
        assert all(a["who"].startswith("token:") for a in audit[:-1])
        assert audit[-1]["target"].startswith("token:")  # the token's creation, by the CLI user


# ---------------------------------------------------------------- link faults, shared groups, CLI


async def test_link_reconnects_after_a_broker_crash(
    own_mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, own_mosquitto, db=gateway_db)
    async with Gateway(settings) as gw:
        own_mosquitto.kill()
        for _ in range(100):
            if not gw.link_connected:
                break
            await asyncio.sleep(0.05)
        assert not gw.link_connected
        await asyncio.to_thread(own_mosquitto.start)
        await asyncio.wait_for(gw.wait_connected(), 15)
        client = await device_client(own_mosquitto, settings, "tv-0003")
        try:
            await client.publish(
                settings.topics.batch("tv-0003"), codec.encode(make_batch("tv-0003", 9)), qos=1
            )
            assert (await next_json(client))[1] == {"v": 1, "acks": [9]}
        finally:
            await client.__aexit__(None, None, None)


async def test_a_publish_awaiting_its_puback_fails_at_once_when_the_broker_dies(
    own_mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    """aiomqtt alone waits out its timeout (connect_timeout_s, 10 s here) for a PUBACK that
    cannot come; the link reports the loss and fails the publish as soon as paho sees it."""
    settings = gateway_settings(tmp_path, own_mosquitto, db=gateway_db)
    async with Gateway(settings) as gw:
        own_mosquitto.pause()  # hung: the PUBLISH is sent and never acknowledged
        sending = asyncio.create_task(gw._publish(settings.topics.keys() + "-x", b"{}", False))
        await asyncio.sleep(0.3)
        assert not sending.done()
        assert gw.link_connected
        own_mosquitto.kill()
        with pytest.raises(LinkDown, match="session ended"):
            await asyncio.wait_for(sending, 3)
        await eventually(lambda: not gw.link_connected, 3, "the link reports the loss")


async def test_the_link_consumes_while_its_connected_hook_waits(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    """The after-connect hook (key list, catalog retries) must not hold up consumption: the
    consumer is what notices a lost session."""
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    received: list[str] = []
    release = asyncio.Event()

    async def on_message(topic: str, payload: bytes) -> None:
        received.append(topic)

    async def hook() -> None:
        await release.wait()

    link = MqttLink(settings, on_message, on_connected=hook)
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.publish(settings.topics.batch("tv-0004"), b"{}", qos=1)
        await eventually(lambda: received, 5, "a message while the hook still waits")
        assert not release.is_set()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_shared_subscription_group(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db, shared_group="gateway")
    client = await device_client(mosquitto, settings, "phone-0001")
    try:
        async with Gateway(settings) as gw:
            batch = make_batch("phone-0001", 1)
            await client.publish(settings.topics.batch("phone-0001"), codec.encode(batch), qos=1)
            assert (await next_json(client))[1] == {"v": 1, "acks": [1]}
            assert gw.counters["batches_stored"] == 1
    finally:
        await client.__aexit__(None, None, None)


def test_cli_run_serves_until_sigterm(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud_gateway.cli",
            "run",
            "--broker",
            mosquitto.url,
            "--data-dir",
            str(tmp_path / "gw"),
            "--http-port",
            "0",
            "--topic-root",
            f"t{uuid.uuid4().hex[:10]}/v1",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            found = re.search(r"gateway ready on http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert json.load(resp)["status"] == "ok"
        assert (tmp_path / "gw" / "trust.json").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_claims_are_stored_and_refused_with_a_signed_result(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    topics = settings.topics
    claim = ClaimRequest(
        id=new_id(), device_id="tv-0009", offer_id="o1", campaign_id="c1", at=utcnow()
    )
    async with (
        Gateway(settings) as gw,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"tv-{uuid.uuid4().hex[:6]}") as dev,
    ):
        await dev.subscribe(topics.claim_down("tv-0009"), qos=1)
        answers = []
        for _ in range(2):
            await dev.publish(topics.claim_up("tv-0009"), codec.encode(claim), qos=1)
            answers.append((await next_json(dev))[1])
        trust = TrustFile.model_validate_json(gw.trust_path.read_text())
        Verifier.from_public_keys(trust.keys).verify(answers[0])
        result = ClaimResult.model_validate(answers[0])
        assert (result.claim_id, result.granted) == (claim.id, False)
        assert result.reason == "unknown campaign"
        assert answers[1] == answers[0]  # a redelivered claim gets the same answer
