"""An agent's world for tests on a real broker: one test's namespace (`World`), a fake
gateway that collects and acks batches, a claim desk that answers claims, the local API."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from agent.api.owners import admin_headers
from agent.config import AgentSettings, load_settings
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import Batch, ClaimRequest, TrustFile
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from simulators.brokers import MosquittoProcess
from tests.support import waiting
from tests.support.builders import SURFACE, offer, signed_ack, unpaced

# in-process state (counters, status, a fake gateway's lists): a short deadline, quick polls
eventually = partial(waiting.eventually, timeout=5.0, step=0.02)


class World:
    """One test's namespace: topic root, device id, signing key, trust file, data dir."""

    def __init__(self, tmp_path: Path, broker: MosquittoProcess) -> None:
        tag = uuid.uuid4().hex[:10]
        self.root = f"t{tag}/v1"
        self.device = f"tv-{tag}"
        self.broker = broker
        self.tmp = tmp_path
        self.signer = Signer.generate("k1")
        self.trust = tmp_path / "trust.json"
        trust = TrustFile(keys=[self.signer.public], topic_root=self.root)
        self.trust.write_bytes(codec.encode(trust))
        self.data = tmp_path / "data"

    def settings(self, agent: dict[str, Any] | None = None, **uplink: Any) -> AgentSettings:
        return load_settings(
            profile="tv",
            device_id=self.device,
            broker=self.broker.url,
            data_dir=self.data,
            api_port=0,
            trust=self.trust,
            overrides={
                "uplink": {"batch_max_age_s": 0.05, "ack_timeout_s": 5.0, **uplink},
                "topic_root": self.root,
                **(agent or {}),
                "decisions": unpaced((agent or {}).get("decisions")),
            },
            environ={},
        )

    def bundle(
        self,
        offer_ids: list[str],
        *,
        cohort: str | None = None,
        signer: Signer | None = None,
        expires_in: timedelta = timedelta(hours=1),
        bundle_id: str | None = None,
    ) -> dict[str, Any]:
        offers = [
            offer(oid, type="replenishment", category="purifier_filter", price=99.0, discount=0.2)
            for oid in offer_ids
        ]
        return self.signed_bundle(
            offers, cohort=cohort, signer=signer, expires_in=expires_in, bundle_id=bundle_id
        )

    def signed_bundle(
        self,
        offers: list[dict[str, Any]],
        *,
        cohort: str | None = None,
        signer: Signer | None = None,
        expires_in: timedelta = timedelta(hours=1),
        bundle_id: str | None = None,
    ) -> dict[str, Any]:
        """A bundle of `offers` (JSON), signed with this world's key unless told otherwise."""
        now = utcnow()
        body: dict[str, Any] = {
            "v": 1,
            "id": bundle_id or new_id(),
            "issued_at": format_time(now),
            "expires_at": format_time(now + expires_in),
            "offers": offers,
        }
        if cohort:
            body["cohort"] = cohort
        return (signer or self.signer).sign(body)


class FakeGateway:
    """A plain MQTT client playing the gateway: collects batches, acks them when told to."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.batches: list[Batch] = []
        self.raw: list[bytes] = []
        self.auto_ack = True
        self.client: aiomqtt.Client | None = None

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.world.broker.port, identifier=f"gw-{uuid.uuid4().hex[:8]}"
        ) as client:
            self.client = client
            await client.subscribe(f"{self.world.root}/dev/+/up/batch", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                batch = codec.decode(payload, Batch, allow_zlib=True)
                self.raw.append(payload)
                self.batches.append(batch)
                if self.auto_ack:
                    await self.ack(batch.seq)

    async def ack(self, *seqs: int) -> None:
        assert self.client is not None
        topic = f"{self.world.root}/dev/{self.world.device}/down/ack"
        await self.client.publish(
            topic, signed_ack(self.world.signer, self.world.device, seqs), qos=1
        )

    async def publish(self, topic: str, obj: dict[str, Any], *, retain: bool = False) -> None:
        assert self.client is not None
        await self.client.publish(
            f"{self.world.root}/{topic}", codec.dumps(obj), qos=1, retain=retain
        )

    def seqs(self) -> list[int]:
        return [b.seq for b in self.batches]


class Responder:
    """Plays the gateway's claim desk: records every `up/claim`, answers when told to."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.requests: list[ClaimRequest] = []
        self.answer: str | None = "granted"  # "granted", "sold_out", or None (stay silent)
        self.signer = world.signer
        self.client: aiomqtt.Client | None = None

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.world.broker.port, identifier=f"claims-{uuid.uuid4().hex[:8]}"
        ) as client:
            self.client = client
            await client.subscribe(f"{self.world.root}/dev/+/up/claim", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                request = codec.decode(message.payload, ClaimRequest)
                self.requests.append(request)
                if self.answer is not None:
                    await self.send(request, granted=self.answer == "granted")

    def result(self, request: ClaimRequest, *, granted: bool, **kw: Any) -> dict[str, Any]:
        now = utcnow()
        body: dict[str, Any] = {
            "v": 1,
            "id": f"r-{request.id}",
            "claim_id": request.id,
            "device_id": request.device_id,
            "offer_id": request.offer_id,
            "granted": granted,
            "code": "CODE-42" if granted else None,
            "reason": "" if granted else "sold_out",
            "issued_at": format_time(now),
            "expires_at": format_time(now + timedelta(hours=1)),
        }
        body.update(kw)
        return body

    async def send(
        self, request: ClaimRequest, *, granted: bool, signer: Signer | None = None, **kw: Any
    ) -> None:
        assert self.client is not None
        body = {
            k: v for k, v in self.result(request, granted=granted, **kw).items() if v is not None
        }
        signed = (signer or self.signer).sign(body)
        topic = f"{self.world.root}/dev/{request.device_id}/down/claim"
        await self.client.publish(topic, codec.dumps(signed), qos=1)

    def ids(self) -> list[str]:
        return [r.id for r in self.requests]


# ---------------------------------------------------------------- the local API


async def http(
    agent: Agent, method: str, path: str, *, auth: bool = True, **kwargs: Any
) -> tuple[int, Any]:
    """One request to the agent's local API (as the admin app, with the token the agent wrote
    on its first start, unless `auth` is False; `headers` add to it): the status and the JSON
    (or text) body."""
    if auth:
        admin = await asyncio.to_thread(admin_headers, agent.settings.data_dir)
        kwargs["headers"] = {**admin, **kwargs.get("headers", {})}
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{agent.api_port}{path}"
        async with session.request(method, url, **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()


async def push(world: World, gw: FakeGateway, agent: Agent, offers: list[dict[str, Any]]) -> None:
    """Send a signed bundle of `offers` to the agent and wait until it verified it."""
    before = agent.counters["bundles_verified"]
    await gw.publish(f"dev/{world.device}/down/offers", world.signed_bundle(offers))
    await eventually(lambda: agent.counters["bundles_verified"] == before + 1)


async def offers_json(agent: Agent, limit: int = 5) -> dict[str, Any]:
    """GET /v1/offers with explanations on the TV home banner."""
    status, body = await http(agent, "GET", f"/v1/offers?surface={SURFACE}&limit={limit}&explain=1")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def reasons(body: dict[str, Any]) -> dict[str, str]:
    """Offer id to the reason it was filtered out, from an explained /v1/offers body."""
    return {f["offer_id"]: f["reason"] for f in body["filtered"]}


async def claim(agent: Agent, offer_id: str) -> tuple[int, Any]:
    """POST /v1/claims of `offer_id`."""
    return await http(agent, "POST", "/v1/claims", json={"offer_id": offer_id})


async def state(agent: Agent, claim_id: str) -> dict[str, Any]:
    """GET /v1/claims/<id>, which must answer 200."""
    status, body = await http(agent, "GET", f"/v1/claims/{claim_id}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body
