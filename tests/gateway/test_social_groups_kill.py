"""Group buys against a real gateway process (issue 19): 200 households over MQTT, groups of 3,
the gateway SIGKILLed once mid-joins and restarted; exact seats, one seat per household, every
key answered the same, every member's device gets a signed formed state with its coupon, a
forged state does not verify, and the operators' figures agree."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import psycopg
import pytest

from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.errors import SignatureError
from protocol.ids import new_id, utcnow
from protocol.signing import Verifier
from protocol.social import SocialRequest, SocialState
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port
from tests.support.processes import start_gateway, stop

pytestmark = pytest.mark.integration

STARTERS = 50
JOINERS = 150  # three per group for two seats left: one of each three is refused
KILL_AFTER = 40  # answers to joins seen before the SIGKILL
FIRST_WAVE = 70  # joins sent before it; the rest come to the restarted gateway


def seats_in(data: Path, url: str | None) -> list[tuple[str, int, int, str]]:
    sql = "SELECT id, seats, size, state FROM social_groups"
    if url is not None:
        with psycopg.connect(url, autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
    db = sqlite3.connect(f"file:{data / 'gateway.db'}?mode=ro", uri=True, timeout=2)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def create_group_campaign(http: aiohttp.ClientSession) -> str:
    offer = {
        "id": "together",
        "type": "group_buy",
        "title": "Purifier filter for three households",
        "category": "purifier_filter",
        "price": 199.0,
        "surfaces": ["tv_home_banner"],
        "group": {"size": 3, "window_s": 3600, "price": 129.0},
    }
    bad = {**offer, "group": {"size": 1, "window_s": 3600, "price": 129.0}}
    resp = await http.post(
        "/v1/campaigns", json={"name": "bad", "cohorts": ["all"], "offers": [bad]}
    )
    assert resp.status == 400
    assert any("size" in str(e.get("loc")) for e in (await resp.json())["errors"])
    resp = await http.post(
        "/v1/campaigns", json={"name": "together", "cohorts": ["all"], "offers": [offer]}
    )
    assert resp.status == 201, await resp.text()
    cid: str = (await resp.json())["id"]
    assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200
    return cid


async def test_groups_form_exactly_across_a_gateway_sigkill(
    mosquitto: MosquittoProcess, gateway_db: str | None, tmp_path: Path
) -> None:
    """SQLite: one gateway, killed and restarted. PostgreSQL: two workers sharing the uplink
    (`$share/...`), one killed and restarted while the other goes on deciding."""
    root = f"sg{uuid.uuid4().hex[:8]}/v1"
    topics = Topics(root)
    workers = 1 if gateway_db is None else 2
    dirs = [tmp_path / f"gw{i}" for i in range(workers)]
    logs = [tmp_path / f"gateway{i}.log" for i in range(workers)]
    ports = [free_port() for _ in range(workers)]
    args: tuple[str, ...] = ("--topic-root", root)
    if gateway_db is not None:
        args += ("--db", gateway_db, "--shared-group", "social")
    data, port = dirs[0], ports[-1]  # the HTTP API of the worker never killed
    procs = [await start_gateway(mosquitto.url, dirs[0], ports[0], logs[0], *args, timeout=30)]
    try:
        for i in range(1, workers):  # one signing key for the fleet of workers
            shutil.copytree(dirs[0] / "keys", dirs[i] / "keys")
            procs.append(
                await start_gateway(mosquitto.url, dirs[i], ports[i], logs[i], *args, timeout=30)
            )
        token = await asyncio.to_thread(create_token, data, db=gateway_db)
        trust = TrustFile.model_validate_json((data / "trust.json").read_text())
        verifier = Verifier.from_public_keys(trust.keys)
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=auth) as http:
            cid = await create_group_campaign(http)

        states: dict[str, list[dict[str, Any]]] = {}
        got = asyncio.Event()
        suffix = uuid.uuid4().hex[:6]
        async with (
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"sg-sub-{suffix}") as sub,
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"sg-pub-{suffix}") as pub,
        ):
            await sub.subscribe(f"{root}/dev/+/down/social", qos=1)

            async def collect() -> None:
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    obj = json.loads(message.payload)
                    states.setdefault(obj["device_id"], []).append(obj)
                    got.set()

            collector = asyncio.create_task(collect(), name="social-collect")

            def answer(device: str, request: SocialRequest) -> dict[str, Any] | None:
                return next(
                    (s for s in states.get(device, []) if s.get("request_id") == request.id),
                    None,
                )

            async def send(requests: dict[str, SocialRequest]) -> None:
                for device, request in requests.items():
                    await pub.publish(topics.social_up(device), codec.encode(request), qos=1)

            async def until_answered(requests: dict[str, SocialRequest], timeout: float) -> None:
                deadline = asyncio.get_running_loop().time() + timeout
                while True:
                    left = {d: r for d, r in requests.items() if answer(d, r) is None}
                    if not left:
                        return
                    assert asyncio.get_running_loop().time() < deadline, f"{len(left)} unanswered"
                    await send(left)  # a device resends the same request until answered
                    await asyncio.sleep(1.0)

            starters = {
                f"hh-{i:03d}": SocialRequest(
                    id=new_id(),
                    device_id=f"hh-{i:03d}",
                    action="group_start",
                    campaign_id=cid,
                    offer_id="together",
                    at=utcnow(),
                )
                for i in range(STARTERS)
            }
            await send(starters)
            await until_answered(starters, 20)
            codes = []
            for device, request in starters.items():
                first = answer(device, request)
                assert first is not None
                verifier.verify(first, role="claims")
                state = SocialState.model_validate(first)
                assert state.status == "open"
                assert state.seats == 1
                assert state.code is not None
                codes.append(state.code)
            rng = random.Random(19)
            joiners = {
                f"hh-{i:03d}": SocialRequest(
                    id=new_id(),
                    device_id=f"hh-{i:03d}",
                    action="group_join",
                    code=codes[i % STARTERS],
                    at=utcnow(),
                )
                for i in range(STARTERS, STARTERS + JOINERS)
            }
            order = list(joiners)
            rng.shuffle(order)
            await send({d: joiners[d] for d in order[:FIRST_WAVE]})
            # the SIGKILL, with joins answered, joins in flight and joins not yet sent
            while sum(answer(d, r) is not None for d, r in joiners.items()) < KILL_AFTER:
                got.clear()
                await asyncio.wait_for(got.wait(), 20)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            procs[0] = await start_gateway(
                mosquitto.url, dirs[0], ports[0], logs[0], *args, timeout=30
            )
            assert sum(answer(d, r) is not None for d, r in joiners.items()) < JOINERS
            await until_answered(joiners, 40)
            await send({d: joiners[d] for d in order[:30]})  # resends of answered keys

            members = set(starters) | {
                d for d, r in joiners.items() if (answer(d, r) or {}).get("status") != "refused"
            }

            def formed(device: str) -> dict[str, Any] | None:
                return next((s for s in states.get(device, []) if s["status"] == "formed"), None)

            deadline = asyncio.get_running_loop().time() + 20
            while any(formed(d) is None for d in members):  # pushes a crash left are re-sent
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)  # the resends' answers
            collector.cancel()

        # every key answered the same, however often it was sent (and across the kill)
        for device, request in {**starters, **joiners}.items():
            copies = [s for s in states[device] if s.get("request_id") == request.id]
            assert all(c == copies[0] for c in copies), device
        outcomes = Counter((answer(d, r) or {}).get("status") for d, r in joiners.items())
        assert outcomes["refused"] == JOINERS - 2 * STARTERS
        assert outcomes["open"] + outcomes["formed"] == 2 * STARTERS
        # every member's device holds a signed formed state with its own coupon
        coupons = set()
        for device in members:
            held = formed(device)
            assert held is not None
            verifier.verify(held, role="claims")
            parsed = SocialState.model_validate(held)
            assert parsed.seats == parsed.size == 3
            assert parsed.device_id == device
            coupons.add(parsed.coupon)
        assert len(members) == 3 * STARTERS == len(coupons)
        forged = {**(formed(next(iter(members))) or {}), "seats": 2}
        with pytest.raises(SignatureError):
            verifier.verify(forged, role="claims")
        groups = await asyncio.to_thread(seats_in, data, gateway_db)
        assert len(groups) == STARTERS
        assert all(seats == size == 3 and state == "formed" for _i, seats, size, state in groups)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=auth) as http:
            resp = await http.get("/v1/social/groups", params={"campaign": cid})
            assert resp.status == 200, await resp.text()
            figures = (await resp.json())["offers"][0]
            assert figures["formed"] == STARTERS
            assert figures["seats_granted"] == 3 * STARTERS
            assert figures["seats_open"] == 0
            bad = await http.get("/v1/social/groups", params={"campaign": "no such/id"})
            assert bad.status == 400
            stats = await (await http.get("/v1/stats")).json()  # this worker's counters
            assert stats["social_received"] > 0
            assert stats["social_formed"] + stats["social_joined"] + stats["social_refused"] > 0
    finally:
        for proc in procs:
            stop(proc)
