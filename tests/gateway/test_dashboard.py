"""The dashboard in headless Chromium (Debian's, driven by Playwright): it loads, shows a
launched campaign's numbers, and pausing from the page pauses the campaign."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import aiomqtt
import pytest

from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.assign import in_holdout
from protocol.envelopes import Batch, Outcome, OutcomeKind, State
from protocol.ids import new_id, utcnow
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import gateway_settings

if TYPE_CHECKING:
    from playwright.async_api import Dialog

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def test_dashboard_shows_numbers_and_pauses(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "chromium is not installed: scripts/test.sh installs it (apt-get install chromium)"
        )
    from playwright.async_api import async_playwright, expect  # noqa: PLC0415 - heavy, test-only

    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    topics = settings.topics
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        base = f"http://127.0.0.1:{gw.http_port}"
        async with aiohttp.ClientSession(
            base, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            resp = await http.post(
                "/v1/campaigns",
                json={
                    "name": "Filter week",
                    "cohorts": ["profile:tv"],
                    "offers": [
                        {
                            "id": "filter-20",
                            "type": "replenishment",
                            "title": "Filter -20%",
                            "category": "purifier_filter",
                            "surfaces": ["tv_home_banner"],
                        }
                    ],
                },
            )
            cid = (await resp.json())["id"]
            assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200
            async with aiomqtt.Client(
                "127.0.0.1", mosquitto.port, identifier=f"tv-{uuid.uuid4().hex[:6]}"
            ) as dev:
                await dev.subscribe(topics.ack("tv-0001"), qos=1)
                state = State(device_id="tv-0001", status="online", profile="tv")
                await dev.publish(topics.state("tv-0001"), codec.encode(state), qos=1)
                kinds: list[OutcomeKind] = ["impression"] * 4
                kinds.append("click")
                batch = Batch(
                    device_id="tv-0001",
                    seq=1,
                    sent_at=utcnow(),
                    agent_version="0.1.0",
                    outcomes=[
                        Outcome(
                            id=new_id(),
                            offer_id="filter-20",
                            campaign_id=cid,
                            kind=k,
                            at=utcnow(),
                            surface="tv_home_banner",
                        )
                        for k in kinds
                    ],
                )
                await dev.publish(topics.batch("tv-0001"), codec.encode(batch), qos=1)
                async with asyncio.timeout(10):
                    await anext(dev.messages)  # the ack: stored

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    page = await browser.new_page()
                    await page.goto(base + "/")
                    await expect(page.locator("h1")).to_have_text("Edgemart campaigns")
                    await page.fill("#token", token)
                    await page.click("#login button[type=submit]")
                    card = page.locator(f'[data-campaign="{cid}"]')
                    await expect(card.locator('[data-metric="impressions"] .value')).to_have_text(
                        "4"
                    )
                    await expect(card.locator('[data-metric="clicks"] .value')).to_have_text("1")
                    await expect(card.locator('[data-metric="ctr"] .value')).to_have_text("25.0%")
                    await expect(card.locator("svg")).to_have_count(1)  # click-rate chart
                    await expect(page.locator('[data-metric="devices"] .value')).to_have_text("1")
                    await expect(card.locator("[data-state]")).to_have_text("live")
                    await card.locator('[data-action="pause"]').click()
                    await expect(card.locator("[data-state]")).to_have_text("paused")
                finally:
                    await browser.close()
            got = await (await http.get(f"/v1/campaigns/{cid}")).json()
            assert got["state"] == "paused"
            audit = await (await http.get("/v1/audit")).json()
            assert audit["entries"][0]["action"] == "campaign.pause"


async def test_dashboard_keeps_its_promises(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """Offer titles (not ids), a dash where there is no data, conversion rate with its interval,
    the holdout share, why a live campaign delivered nothing, a confirmation before End,
    action messages that stay, and a page that fits a 420 px wide screen."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "chromium is not installed: scripts/test.sh installs it (apt-get install chromium)"
        )
    from playwright.async_api import async_playwright, expect  # noqa: PLC0415 - heavy, test-only

    settings = gateway_settings(tmp_path, mosquitto)
    topics = settings.topics
    offer = {
        "id": "filter-20",
        "type": "replenishment",
        "title": "Filter -20%",
        "category": "purifier_filter",
        "surfaces": ["tv_home_banner"],
    }
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir)
        base = f"http://127.0.0.1:{gw.http_port}"
        async with aiohttp.ClientSession(
            base, headers={"Authorization": f"Bearer {token}"}
        ) as http:

            async def launched(body: dict[str, object]) -> str:
                resp = await http.post("/v1/campaigns", json=body)
                assert resp.status == 201, await resp.text()
                cid: str = (await resp.json())["id"]
                assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200
                return cid

            sold = await launched(
                {
                    "name": "Filter week",
                    "cohorts": ["profile:tv"],
                    "holdout": 0.1,
                    "offers": [offer],
                }
            )
            quiet = await launched(
                {
                    "name": "Hub only",
                    "cohorts": ["profile:hub"],
                    "offers": [{**offer, "id": "hub-1", "title": "Hub bundle"}],
                }
            )
            device = next(
                f"tv-{i:04d}" for i in range(1000) if not in_holdout(f"tv-{i:04d}", sold, 0.1)
            )
            async with aiomqtt.Client(
                "127.0.0.1", mosquitto.port, identifier=f"tv-{uuid.uuid4().hex[:6]}"
            ) as dev:
                await dev.subscribe(topics.ack(device), qos=1)
                state = State(device_id=device, status="online", profile="tv")
                await dev.publish(topics.state(device), codec.encode(state), qos=1)
                kinds: list[OutcomeKind] = ["impression", "impression", "impression"]
                kinds += ["impression", "click", "conversion"]
                batch = Batch(
                    device_id=device,
                    seq=1,
                    sent_at=utcnow(),
                    agent_version="0.1.0",
                    outcomes=[
                        Outcome(
                            id=new_id(),
                            offer_id="filter-20",
                            campaign_id=sold,
                            kind=k,
                            at=utcnow(),
                            surface="tv_home_banner",
                        )
                        for k in kinds
                    ],
                )
                await dev.publish(topics.batch(device), codec.encode(batch), qos=1)
                async with asyncio.timeout(10):
                    await anext(dev.messages)  # the ack: stored

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 420, "height": 900})
                    await page.goto(base + "/")
                    await page.fill("#token", token)
                    await page.click("#login button[type=submit]")
                    card = page.locator(f'[data-campaign="{sold}"]')
                    idle = page.locator(f'[data-campaign="{quiet}"]')
                    # offer titles, not ids
                    await expect(card.locator('[data-metric="offers"]')).to_have_text("Filter -20%")
                    assert "filter-20" not in await card.inner_text()
                    # the conversion rate with its 95% interval; the holdout share
                    rate = card.locator('[data-metric="conversion_rate"]')
                    await expect(rate.locator(".value")).to_have_text("25.0%")
                    await expect(rate.locator(".range")).to_contain_text("95%:")
                    await expect(card.locator('[data-metric="ctr"] .value')).to_have_text("25.0%")
                    await expect(card.locator('[data-metric="holdout"] .value')).to_have_text(
                        "10.0%"
                    )
                    # no data: a dash, and why nothing was delivered
                    await expect(idle.locator('[data-metric="ctr"] .value')).to_have_text("–")
                    await expect(
                        idle.locator('[data-metric="conversion_rate"] .value')
                    ).to_have_text("–")
                    await expect(idle.locator('[data-metric="idle"]')).to_contain_text(
                        "none of the 1 registered devices is in its audience"
                    )
                    # End asks first: dismissed, nothing happens
                    page.once("dialog", lambda dialog: dialog.dismiss())
                    await idle.locator('[data-action="end"]').click()
                    await expect(page.locator("#notice")).to_have_text("Hub only: End cancelled.")
                    await expect(idle.locator("[data-state]")).to_have_text("live")
                    asked: list[str] = []

                    async def accept(dialog: Dialog) -> None:
                        asked.append(dialog.message)
                        await dialog.accept()

                    page.once("dialog", accept)
                    await idle.locator('[data-action="end"]').click()
                    await expect(idle.locator("[data-state]")).to_have_text("ended")
                    assert asked and "for good" in asked[0]
                    # the message stays through the page's refreshes
                    await page.evaluate("refresh()")
                    await expect(page.locator("#notice")).to_have_text("Hub only: End done.")
                    # nothing wider than the 420 px screen
                    width = await page.evaluate("document.documentElement.scrollWidth")
                    assert width <= 420
                finally:
                    await browser.close()
            got = await (await http.get(f"/v1/campaigns/{quiet}")).json()
            assert got["state"] == "ended"
