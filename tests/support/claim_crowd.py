"""A flash sale's crowd of devices claiming over MQTT: several publisher connections send claim
requests (bounded in flight), one subscriber collects every answer by device; the sale's
launch through the API and the check of the answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from types import TracebackType
from typing import Any

import aiohttp
import aiomqtt

from protocol import codec
from protocol.envelopes import ClaimRequest, ClaimResult
from protocol.ids import new_id, utcnow
from protocol.signing import Verifier
from protocol.topics import Topics

IN_FLIGHT = 64


class ClaimCrowd:
    """`async with ClaimCrowd(port, topics, claims) as crowd:` then `await crowd.send([...])`;
    `crowd.answers[device]` holds every answer that device received, in order."""

    def __init__(
        self,
        port: int,
        topics: Topics,
        claims: dict[str, ClaimRequest],
        *,
        connections: int = 8,
        tag: str = "crowd",
    ) -> None:
        self.topics = topics
        self.claims = claims
        self.answers: dict[str, list[dict[str, Any]]] = {}
        self.got_answer = asyncio.Event()
        suffix = uuid.uuid4().hex[:6]
        self._sub = aiomqtt.Client("127.0.0.1", port, identifier=f"{tag}-sub-{suffix}")
        self._pubs = [
            aiomqtt.Client("127.0.0.1", port, identifier=f"{tag}-pub{i}-{suffix}")
            for i in range(connections)
        ]
        self._collector: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ClaimCrowd:
        await self._sub.__aenter__()
        await self._sub.subscribe(f"{self.topics.root}/dev/+/down/claim", qos=1)
        self._collector = asyncio.create_task(self._collect(), name="claim-crowd-collect")
        for pub in self._pubs:
            await pub.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        for pub in self._pubs:
            await pub.__aexit__(None, None, None)
        await self._sub.__aexit__(None, None, None)

    async def _collect(self) -> None:
        async for message in self._sub.messages:
            assert isinstance(message.payload, bytes)
            obj = json.loads(message.payload)
            self.answers.setdefault(obj["device_id"], []).append(obj)
            self.got_answer.set()

    async def send(self, devices: list[str]) -> None:
        """Each device's claim once more (the same request: the same idempotency key)."""

        async def one(i: int, device: str) -> None:
            pub = self._pubs[i % len(self._pubs)]
            await pub.publish(
                self.topics.claim_up(device), codec.encode(self.claims[device]), qos=1
            )

        numbered = list(enumerate(devices))
        for start in range(0, len(numbered), IN_FLIGHT):
            await asyncio.gather(*(one(i, d) for i, d in numbered[start : start + IN_FLIGHT]))


async def launch_flash_sale(http: aiohttp.ClientSession, name: str, stock: int) -> str:
    """Create and launch a campaign of one limited coupon, `flash-1`, with `stock` coupons,
    through the operators' API; its id."""
    resp = await http.post(
        "/v1/campaigns",
        json={
            "name": name,
            "cohorts": ["all"],
            "offers": [
                {
                    "id": "flash-1",
                    "type": "coupon",
                    "title": f"Purifier -50% ({stock} coupons)",
                    "category": "appliances",
                    "discount": 0.5,
                    "surfaces": ["tv_home_banner"],
                    "limited": True,
                    "stock": stock,
                }
            ],
        },
    )
    assert resp.status == 201, await resp.text()
    cid: str = (await resp.json())["id"]
    assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200
    return cid


def flash_claims(devices: list[str], cid: str) -> dict[str, ClaimRequest]:
    """One claim of `flash-1` per device, each with its own id (its idempotency key)."""
    return {
        d: ClaimRequest(id=new_id(), device_id=d, offer_id="flash-1", campaign_id=cid, at=utcnow())
        for d in devices
    }


def granted_codes(
    answers: dict[str, list[dict[str, Any]]],
    claims: dict[str, ClaimRequest],
    verifier: Verifier,
) -> dict[str, str]:
    """Check every answer (each key answered the same every time, signed, for its claim,
    granted with a code or refused as sold out); the coupon code of each granted device."""
    granted: dict[str, str] = {}
    for d, copies in answers.items():
        for copy in copies:
            assert copy == copies[0], f"{d} got different answers to one key"
        verifier.verify(copies[0])
        result = ClaimResult.model_validate(copies[0])
        assert result.claim_id == claims[d].id
        if result.granted:
            assert result.code
            granted[d] = result.code
        else:
            assert result.reason == "sold out"
    return granted
