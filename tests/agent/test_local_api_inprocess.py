"""The local API and decisions in-process: the agent built by its composition root over a
transport that needs no broker, the API driven with aiohttp's test client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from importlib.resources import files
from pathlib import Path

from tests.support.local_device import SURFACE, Client, Device
from tests.support.waiting import eventually


async def test_signals_answer_202_once_committed(device: Device, client: Client) -> None:
    signals = [{"kind": "app_open", "attrs": {"app": "tv", "category": "games"}}] * 3
    response = await client.post("/v1/signals", json={"signals": signals})
    assert response.status == 202
    body = await response.json()
    assert body["accepted"] == 3 and len(body["ids"]) == 3
    store = device.agent.store
    stored = await store.call(
        lambda: store.thread.conn().execute("SELECT id FROM signals ORDER BY id").fetchall()
    )
    assert sorted(body["ids"]) == [row[0] for row in stored]
    assert store.depth == 3


async def test_a_bad_signal_is_refused_with_its_field_path(device: Device, client: Client) -> None:
    good = {"kind": "app_open", "attrs": {"app": "tv", "category": "games"}}
    response = await client.post("/v1/signals", json={"signals": [good, {"kind": 7}]})
    assert response.status == 400
    errors = (await response.json())["errors"]
    assert errors and all(e["loc"].startswith("signals.1") for e in errors), errors
    assert device.agent.store.depth == 0  # nothing of the request was stored
    assert device.agent.counters["api_rejected"] == 1


async def test_consent_is_read_and_set(device: Device, client: Client) -> None:
    before = await (await client.get("/v1/consent")).json()
    purposes = {"analytics": False, "personalization": True, "marketing": True}
    response = await client.put("/v1/consent", json={"purposes": purposes})
    assert response.status == 200
    after = await response.json()
    assert after["version"] == before["version"] + 1
    assert not device.agent.consent.analytics and device.agent.consent.personalization
    bad = await client.put("/v1/consent", json={"purposes": {"analytics": "maybe"}})
    assert bad.status == 400


async def test_offers_are_ranked_and_outcomes_recorded(device: Device, client: Client) -> None:
    await device.agent.set_consent({"analytics": True, "personalization": True, "marketing": True})
    await device.transports.last.deliver(
        "offers", device.bundle([("low", 0.05, 10), ("high", 0.5, 90), ("mid", 0.2, 50)])
    )
    assert len(device.agent.offers) == 3
    response = await client.get("/v1/offers", params={"surface": SURFACE, "limit": "3"})
    assert response.status == 200
    body = await response.json()
    ranked = [o["id"] for o in body["offers"]]
    assert sorted(ranked) == ["high", "low", "mid"]
    scores = [o["score"] for o in body["offers"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model_version"] == device.agent.model_version
    shown = await client.post(
        "/v1/outcomes", json={"offer_id": ranked[0], "kind": "impression", "surface": SURFACE}
    )
    assert shown.status == 202 and (await shown.json())["id"]
    assert device.agent.store.counters.outcome_rows == 1
    unknown = await client.post(
        "/v1/outcomes", json={"offer_id": "nope", "kind": "click", "surface": SURFACE}
    )
    assert unknown.status == 404
    bad_surface = await client.get("/v1/offers", params={"surface": "fridge", "limit": "0"})
    assert bad_surface.status == 400
    locs = {e["loc"] for e in (await bad_surface.json())["errors"]}
    assert locs == {"surface", "limit"}


async def test_decisions_in_process_follow_the_daily_cap(device: Device) -> None:
    agent = device.agent
    await agent.set_consent({"analytics": True, "personalization": True, "marketing": True})
    await device.transports.last.deliver("offers", device.bundle([("only", 0.3, 50)]))
    decision = await agent.decide(SURFACE, 3, explain=True)
    assert [r.offer.id for r in decision.ranked] == ["only"]
    agent.decisions.cap_limits = dataclasses.replace(agent.decisions.cap_limits, offer_per_day=2)
    for _ in range(2):
        await agent.record_outcome("only", "impression", SURFACE)
    capped = await agent.decide(SURFACE, 3, explain=True)
    assert capped.ranked == []
    assert dict(capped.filtered)["only"].startswith("cap")


async def test_readiness_follows_the_link(device: Device, client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    down = await client.get("/readyz")
    assert down.status == 503 and (await down.json())["link"] is False
    device.transports.last.up()
    up = await client.get("/readyz")
    assert up.status == 200, await up.json()
    assert (await up.json())["loops_down"] == []


async def test_a_dead_loop_is_restarted_and_readiness_shows_it(
    device: Device, client: Client
) -> None:
    device.transports.last.up()
    runs = 0
    release = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await release.wait()
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    device.agent.parts.loops.start("flaky", flaky)
    assert (await client.get("/readyz")).status == 200
    release.set()
    await eventually(lambda: device.agent.parts.loops.down() == ["flaky"])
    dead = await client.get("/readyz")
    assert dead.status == 503 and (await dead.json())["loops_down"] == ["flaky"]
    await eventually(lambda: runs == 2, timeout=5)
    assert (await client.get("/readyz")).status == 200
    assert device.agent.counters["loop_restarts_flaky"] == 1


async def test_models_loaded_counts_every_model_loaded(device: Device) -> None:
    """The shipped default at start counts, as does each model swapped in later."""
    agent = device.agent
    assert agent.counters["models_loaded"] == 1
    default = Path(str(files("models") / "default"))
    text = await asyncio.to_thread((default / "manifest.json").read_text, encoding="utf-8")
    assert await agent.replace_model(default / "model.onnx", json.loads(text))
    assert agent.counters["models_loaded"] == 2
