"""The dashboard's working pages in headless Chromium (Debian's, driven by Playwright) against a
real gateway: a campaign created end to end from the form (the API's field errors shown next to
the fields, fixed, created, edited, launched, in the list), its trends and explanations, model
rollouts with an experiment, and a device page.

With `EDGEMART_DASHBOARD_SHOTS=<dir>` the test also saves a screenshot of each page there
(`docs/dashboard/*.png` are made so: `scripts/dashboard_shots.sh`)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import aiomqtt
import pytest

from cloud_gateway.db.ingest import store_batch
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from models.layout import DEFAULT_DIR
from models.publish import publish
from protocol import codec
from protocol.assign import in_holdout
from protocol.envelopes import (
    Batch,
    BatchStats,
    ModelUpdateReport,
    Outcome,
    OutcomeKind,
    Signal,
    State,
)
from protocol.ids import new_id, utcnow
from protocol.vocabulary import EXPLAIN_KIND
from simulators.brokers import MosquittoProcess
from tests.gateway.test_dashboard import ARGS, CHROMIUM
from tests.support.dashboard_shots import shot as _shot
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from playwright.async_api import Route

pytestmark = pytest.mark.integration


def _experiment() -> dict[str, Any]:
    """An experiment object as the registry's experiments (issue 18 item 3) add it."""

    def arm(version: int, devices: int, imps: int, clicks: int, conv: int) -> dict[str, Any]:
        ctr, cr = clicks / imps, conv / imps
        return {
            "model_version": version,
            "devices": devices,
            "impressions": imps,
            "clicks": clicks,
            "conversions": conv,
            "revenue_per_1000": round(1000 * conv * 30.0 / imps, 2),
            "ctr": {"value": ctr, "low": ctr * 0.8, "high": ctr * 1.2},
            "conversion": {"value": cr, "low": cr * 0.7, "high": cr * 1.3},
        }

    return {
        "id": "exp-1",
        "control": 1,
        "candidate": 2,
        "share": 0.5,
        "state": "promoted",
        "verdict": "candidate better on conversion (sequential test, 95%)",
        "decided_at": "2026-12-06T12:00:00.000Z",
        "started_at": "2026-12-05T08:00:00.000Z",
        "arms": [arm(1, 120, 4000, 160, 40), arm(2, 118, 3900, 210, 66)],
    }


async def _report(gw: Gateway, device: str, campaign: str, seq: int, **counts: Any) -> None:
    """A batch of `device`: outcomes of the campaign an hour apart and its explanation
    counts, stored as the ingest path stores it."""
    now = utcnow()
    kinds: list[tuple[OutcomeKind, int]] = counts.pop("outcomes", [])
    outcomes = [
        Outcome(
            id=new_id(),
            offer_id="filter-20",
            campaign_id=campaign,
            kind=kind,
            at=now - timedelta(hours=ago),
            surface="tv_home_banner",
        )
        for kind, ago in kinds
    ]
    signal = Signal(
        id=new_id(), kind=EXPLAIN_KIND, at=now, attrs={"campaign_id": campaign, **counts}
    )
    batch = Batch(
        device_id=device,
        seq=seq,
        sent_at=now,
        agent_version="0.1.0",
        model_version=2,
        outcomes=outcomes,
        signals=[signal],
        stats=BatchStats(outbox_depth=3),
    )
    assert await gw.db.call(store_batch, device, batch, now)


async def test_a_campaign_is_made_from_the_form_and_every_page_shows_real_data(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "chromium is not installed: scripts/test.sh installs it (apt-get install chromium)"
        )
    from playwright.async_api import async_playwright, expect  # noqa: PLC0415 - heavy, test-only

    settings = gateway_settings(tmp_path, mosquitto)
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir)
        base = f"http://127.0.0.1:{gw.http_port}"
        await publish(base, token, DEFAULT_DIR, version=2, profiles=["tv"], percent=10)
        # v3 on the hubs fails its health check on five of them: the registry halts it
        await publish(base, token, DEFAULT_DIR, version=3, profiles=["hub"], percent=50)
        failed = ModelUpdateReport(version=3, status="failed", reason="health_check")
        for i in range(5):
            await gw.models.record_health(f"hub-{i:04d}", failed)
        auth = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(base, headers=auth) as http,
            aiomqtt.Client(
                "127.0.0.1", mosquitto.port, identifier=f"tv-{uuid.uuid4().hex[:6]}"
            ) as dev,
        ):
            state = State(
                device_id="tv-0001", status="online", profile="tv", model_version=2,
                policy_version=0,
            )  # fmt: skip
            await dev.publish(settings.topics.state("tv-0001"), codec.encode(state), qos=1)

            async def registered() -> bool:
                resp = await http.get("/v1/devices/tv-0001")
                return resp.status == 200 and (await resp.json())["profile"] == "tv"

            await eventually(registered, what="tv-0001 registered with its profile")

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1100, "height": 900})
                    await page.goto(base + "/")
                    await page.fill("#token", token)
                    await page.click("#login button[type=submit]")
                    await expect(page.locator('[data-metric="devices"] .value')).to_have_text("1")

                    # -- the form: the API's errors next to their fields, then fixed
                    await page.click('nav [data-nav="new"]')
                    form = page.locator("#campaign-form")
                    audience = form.locator('[data-metric="audience"]')
                    await expect(audience).to_have_text("Audience now: 1 of 1 registered device(s)")
                    await form.locator('[data-loc="cohorts"]').fill("profile:tv, profile:nope")
                    await expect(form.locator('[data-error-for="cohorts"]')).to_contain_text(
                        "unknown cohort 'profile:nope'"
                    )
                    await form.locator('[data-loc="cohorts"]').fill("profile:tv")
                    await expect(form.locator('[data-error-for="cohorts"]')).to_have_text("")
                    await form.locator('[data-loc="name"]').fill("Filter week")
                    await form.locator('[data-loc="holdout"]').fill("0.9")
                    offer = form.locator('[data-offer="0"]')
                    await offer.locator('[data-loc="offers.0.title"]').fill("Filter -20%")
                    await offer.locator('[data-loc="offers.0.type"]').select_option("replenishment")
                    await offer.locator('[data-loc="offers.0.category"]').fill("purifier_filter")
                    await offer.locator('[data-loc="offers.0.surfaces"]').fill("tv_home_banner")
                    await offer.locator('[data-loc="offers.0.stock"]').fill("40")
                    await form.locator('[data-action="save"]').click()
                    holdout_error = form.locator('[data-error-for="holdout"]')
                    await expect(holdout_error).to_contain_text("less than or equal to 0.5")
                    await expect(form.locator('[data-loc="holdout"]')).to_have_attribute(
                        "aria-invalid", "true"
                    )
                    await _shot(page, "campaign-form")
                    await form.locator('[data-loc="holdout"]').fill("0.1")
                    await form.locator('[data-action="save"]').click()
                    # a limited offer's stock needs `limited`: the API's model error lands
                    # in the offer's box
                    await expect(offer.locator('[data-error-for="offers.0"]')).to_contain_text(
                        "stock is only for limited offers"
                    )
                    await expect(holdout_error).to_have_text("")
                    await offer.locator('[data-loc="offers.0.limited"]').check()
                    await form.locator('[data-action="save"]').click()
                    await expect(page.locator("#notice")).to_contain_text(
                        "Filter week: draft created; audience now 1 device(s)"
                    )
                    listed = (await (await http.get("/v1/campaigns")).json())["campaigns"]
                    assert [c["name"] for c in listed] == ["Filter week"]
                    cid = listed[0]["id"]
                    assert listed[0]["holdout"] == 0.1
                    assert listed[0]["offers"][0]["stock"] == 40
                    card = page.locator(f'[data-campaign="{cid}"]')
                    await expect(card.locator("[data-state]")).to_have_text("draft")

                    # -- edit the draft: its offer id stays, the name changes, and what the
                    # form does not show (set through the API meanwhile) is kept
                    first = listed[0]["offers"][0]
                    extra = {"body": "Genuine filter", "currency": "EUR", "priority": 80}
                    spec = {
                        "name": "Filter week",
                        "cohorts": ["profile:tv"],
                        "holdout": 0.1,
                        "offers": [{**first, **extra, "caps": {}}],
                    }
                    resp = await http.put(f"/v1/campaigns/{cid}", json=spec)
                    assert resp.status == 200, await resp.text()
                    await page.evaluate("refresh()")
                    await card.locator('[data-action="edit"]').click()
                    # the form of this draft, not the one it replaces (loaded meanwhile)
                    await expect(form).to_have_attribute("data-campaign", cid)
                    await expect(form.locator('[data-loc="name"]')).to_have_value("Filter week")
                    await form.locator('[data-loc="name"]').fill("Filter fortnight")
                    await form.locator('[data-action="save"]').click()
                    await expect(card.locator("h3 a")).to_have_text("Filter fortnight")
                    got = await (await http.get(f"/v1/campaigns/{cid}")).json()
                    assert got["offers"][0]["id"] == first["id"]
                    assert {k: got["offers"][0][k] for k in extra} == extra
                    assert (got["holdout"], got["offers"][0]["stock"]) == (0.1, 40)

                    # -- launch from the list
                    await card.locator('[data-action="launch"]').click()
                    await expect(card.locator("[data-state]")).to_have_text("live")
                    assert (await (await http.get(f"/v1/campaigns/{cid}")).json())[
                        "state"
                    ] == "live"
                    # outcomes come from a device outside the holdout (keyed by the new id)
                    treated = next(
                        d for d in (f"tv-{i:04d}" for i in range(4, 1000))
                        if not in_holdout(d, cid, 0.1)
                    )  # fmt: skip
                    await _report(
                        gw, treated, cid, 1, shown=4,
                        outcomes=[("impression", 0), ("impression", 0), ("click", 0),
                                  ("impression", 2), ("conversion", 2)],
                    )  # fmt: skip
                    await _report(gw, "tv-0001", cid, 1)  # its outbox depth, no counts
                    await _report(gw, "tv-0002", cid, 1, quiet_hours=3)
                    await _report(gw, "tv-0003", cid, 1, cap=2)
                    await page.evaluate("refresh()")
                    await _shot(page, "campaigns")

                    # -- the campaign page: trends with intervals, the explanations
                    await card.locator('[data-link="details"]').click()
                    trends = page.locator('[data-metric="trends"]')
                    await expect(
                        trends.locator('[data-metric="trend-impressions"] .value')
                    ).to_have_text("3")
                    rows = trends.locator('[data-metric="trend-table"] tr[data-hour]')
                    await expect(rows).to_have_count(2)
                    now_row = rows.nth(0)
                    await expect(now_row.locator("td").nth(1)).to_have_text("2")
                    await expect(now_row.locator("td").nth(2)).to_have_text("1")
                    await expect(now_row.locator("td").nth(4)).to_contain_text("50.0% (")
                    await expect(trends.locator("circle")).to_have_count(2)  # hours with a rate
                    sentence = page.locator('[data-metric="explain-sentence"]')
                    await expect(sentence).to_have_text(
                        "Reached 3 devices; 1 shown; 1 capped; 1 held by quiet hours."
                    )
                    held = page.locator('[data-metric="explain-table"] [data-stage="quiet_hours"]')
                    await expect(held.locator("td").nth(1)).to_have_text("1")
                    await expect(held.locator("td").nth(2)).to_have_text("3")  # decisions
                    await _shot(page, "campaign")
                    await page.set_viewport_size({"width": 420, "height": 900})
                    width = await page.evaluate("document.documentElement.scrollWidth")
                    assert width <= 420  # the charts and tables fit a narrow screen
                    await page.set_viewport_size({"width": 1100, "height": 900})

                    # -- models: the rollout, its health, and an experiment when present
                    async def with_experiment(route: Route) -> None:
                        resp = await route.fetch()
                        body = await resp.json()
                        for model in body["models"]:
                            if model["version"] == 2:
                                model["experiment"] = _experiment()
                        await route.fulfill(response=resp, json=body)

                    await page.route("**/v1/models", with_experiment)
                    await page.click('nav [data-nav="models"]')
                    model = page.locator('[data-model="2"]')
                    await expect(model.locator('[data-field="rollout"]')).to_have_text(
                        "tv: 10% of all"
                    )
                    await expect(model.locator('[data-field="health-state"]')).to_have_text(
                        "healthy"
                    )
                    experiment = model.locator('[data-experiment="exp-1"]')
                    await expect(
                        experiment.locator('[data-field="experiment-state"]')
                    ).to_have_text("promoted")
                    await expect(experiment.locator('[data-field="verdict"]')).to_contain_text(
                        "Verdict: candidate better on conversion"
                    )
                    arm = experiment.locator('[data-arm="2"] td')
                    await expect(arm.nth(0)).to_have_text("v2 (candidate)")
                    await expect(arm.nth(5)).to_have_text("5.4% (4.3%–6.5%)")
                    halted = page.locator('[data-model="3"]')
                    await expect(halted.locator('[data-field="health-state"]')).to_have_text(
                        "halted"
                    )
                    await expect(halted.locator('[data-field="failed"]')).to_have_text("5")
                    await expect(halted.locator('[data-field="halt"]')).to_contain_text(
                        "5 of 5 reporting devices failed"
                    )
                    await expect(halted.locator("[data-experiment]")).to_have_count(0)
                    await expect(experiment.locator("[data-stop-for]")).to_have_count(0)
                    await _shot(page, "models")

                    # -- a running experiment: its Stop form sends to the real API and shows
                    # the field error next to the reason, the 404 (no such experiment) on top
                    running = {**_experiment(), "id": "model:default:9", "state": "running"}

                    async def with_running(route: Route) -> None:
                        resp = await route.fetch()
                        body = await resp.json()
                        for model in body["models"]:
                            if model["version"] == 2:
                                model["experiment"] = running
                        await route.fulfill(response=resp, json=body)

                    await page.unroute("**/v1/models")
                    await page.route("**/v1/models", with_running)
                    await page.evaluate("refresh()")
                    stop = page.locator('[data-stop-for="model:default:9"]')
                    await stop.locator('[data-action="stop-rollback"]').click()
                    await expect(stop.locator('[data-error-for="reason"]')).to_contain_text(
                        "at least 1 character"
                    )
                    await stop.locator('[data-loc="reason"]').fill("checkout errors")
                    await stop.locator('[data-action="stop-promote"]').click()
                    await expect(stop.locator('[data-error-for="(root)"]')).to_contain_text(
                        "not found"
                    )
                    await expect(stop.locator('[data-error-for="reason"]')).to_have_text("")
                    await expect(page.locator("#notice")).to_contain_text("not stopped")
                    await page.unroute("**/v1/models")

                    # -- devices, and one device's page
                    await page.click('nav [data-nav="devices"]')
                    await expect(page.locator("[data-device]")).to_have_count(4)
                    await _shot(page, "devices")
                    await page.click('[data-device="tv-0001"] a')
                    device = page.locator('[data-device-page="tv-0001"]')
                    await expect(device.locator('[data-field="state"]')).to_have_text("online")
                    await expect(device.locator('[data-field="model_version"]')).to_have_text("2")
                    await expect(device.locator('[data-field="policy_version"]')).to_contain_text(
                        "0"
                    )
                    await expect(device.locator('[data-field="outbox_depth"]')).to_have_text("3")
                    seen = await device.locator('[data-field="last_seen"]').inner_text()
                    assert seen.startswith(str(utcnow().year))
                    await _shot(page, "device")
                    await page.goto(base + "/#/device/tv-9999")
                    await expect(page.locator('[data-metric="device-missing"]')).to_contain_text(
                        "No device tv-9999"
                    )
                finally:
                    await browser.close()
