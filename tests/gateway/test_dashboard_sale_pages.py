"""The dashboard's live-commerce pages in headless Chromium (Debian's, driven by Playwright)
against a real gateway: a live sale and a group buy made from the pages, then sold out, formed
and helped by devices over the broker, the pages showing the live figures.

With `EDGEMART_DASHBOARD_SHOTS=<dir>` the test also saves a screenshot of each page there
(`docs/dashboard/*.png` are made so: `scripts/dashboard_shots.sh`)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import aiomqtt
import pytest

from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from cloud_gateway.social.rules import cut_schedule, price_after
from protocol import codec
from protocol.envelopes import (
    ClaimRequest,
    State,
)
from protocol.ids import new_id, utcnow
from protocol.social import SocialRequest
from simulators.brokers import MosquittoProcess
from tests.gateway.test_dashboard import ARGS, CHROMIUM
from tests.support.dashboard_shots import shot as _shot
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.integration


async def test_a_live_sale_and_a_group_buy_are_made_from_the_pages_and_show_live_figures(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """Issue 19 item 5: a live sale (waves, stock) and a group-buy campaign made from the
    pages, the API's field errors shown inline; devices claim and group over the real broker;
    the pages show each wave's grants and sell-out, stock added and pulled from the page, the
    groups formed, and the member tiers' points."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: scripts/test.sh installs it")
    from playwright.async_api import async_playwright, expect  # noqa: PLC0415 - heavy, test-only

    settings = gateway_settings(tmp_path, mosquitto)
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir)
        base = f"http://127.0.0.1:{gw.http_port}"
        auth = {"Authorization": f"Bearer {token}"}
        devices = ["tv-0001", "tv-0002", "tv-0003"]
        async with (
            aiohttp.ClientSession(base, headers=auth) as http,
            aiomqtt.Client(
                "127.0.0.1", mosquitto.port, identifier=f"tv-{uuid.uuid4().hex[:6]}"
            ) as dev,
            async_playwright() as pw,
        ):
            for d in devices:
                state = State(device_id=d, status="online", profile="tv", model_version=2,
                              policy_version=0)  # fmt: skip
                await dev.publish(settings.topics.state(d), codec.encode(state), qos=1)

            async def registered() -> bool:
                listed = await (await http.get("/v1/devices")).json()
                return len(listed["devices"]) == len(devices)

            await eventually(registered, what="three devices registered")
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 900})
                await page.goto(base + "/")
                await page.fill("#token", token)
                await page.click("#login button[type=submit]")
                await expect(page.locator('[data-metric="devices"] .value')).to_have_text("3")

                # -- a live sale of two waves: the first opened a minute ago (2 coupons)
                await page.click('nav [data-nav="new-sale"]')
                form = page.locator("#sale-form")
                await form.locator('[data-loc="name"]').fill("Evening drop")
                await form.locator('[data-action="add-wave"]').click()
                opened = await page.evaluate("nowLocal(-1)")
                await form.locator('[data-loc="waves.0.at"]').fill(opened)
                for w, title in ((0, "Kettle -50%"), (1, "Toaster -40%")):
                    o = f"waves.{w}.offers.0"
                    await form.locator(f'[data-loc="{o}.title"]').fill(title)
                    await form.locator(f'[data-loc="{o}.category"]').fill("appliances")
                    await form.locator(f'[data-loc="{o}.surfaces"]').fill("tv_home_banner")
                await form.locator('[data-loc="waves.1.offers.0.stock"]').fill("5")
                await form.locator('[data-action="save"]').click()
                # the first wave's offer has no stock: the API's error in that wave's box
                await expect(form.locator('[data-error-for="waves.0.offers.0"]')).to_have_text(
                    "a wave's offer is limited, with its stock"
                )
                await expect(form.locator('[data-error-for="waves.1"]')).to_have_text("")
                await _shot(page, "live-sale-form")
                await form.locator('[data-loc="waves.0.offers.0.stock"]').fill("2")
                await form.locator('[data-action="save"]').click()
                await expect(page.locator("#notice")).to_contain_text(
                    "Evening drop: live sale created with 2 wave(s)"
                )
                sale_id = page.url.rsplit("/", 1)[1]
                sale = await (await http.get(f"/v1/campaigns/{sale_id}")).json()
                first, second = (o["id"] for o in sale["offers"])
                waves = page.locator('[data-metric="waves"]')
                await expect(
                    waves.locator(f'[data-offer="{first}"] [data-field="left"]')
                ).to_have_text("2")
                await page.locator('#page-campaign [data-action="launch"]').click()
                await expect(page.locator("#page-campaign [data-state]")).to_have_text("live")

                # three devices claim the first wave's two coupons over the broker
                for d in devices:
                    claim = ClaimRequest(
                        id=new_id(), device_id=d, offer_id=first, campaign_id=sale_id, at=utcnow()
                    )
                    await dev.publish(settings.topics.claim_up(d), codec.encode(claim), qos=1)
                row = waves.locator(f'[data-offer="{first}"]')
                await expect(row.locator('[data-field="granted"]')).to_have_text("2")
                await expect(row.locator('[data-field="left"]')).to_have_text("0")
                await expect(row.locator('[data-field="sold_out_at"]')).to_contain_text(
                    f"{utcnow().year}-"
                )
                # stock from the page: bad input named inline, then 3 pulled of the second wave
                later = waves.locator(f'[data-stock-for="{second}"]')
                await later.locator('[data-loc="delta"]').fill("two")
                await later.locator('[data-action="pull-stock"]').click()
                await expect(later.locator('[data-error-for="delta"]')).to_contain_text(
                    "valid integer"
                )
                await later.locator('[data-loc="delta"]').fill("3")
                await later.locator('[data-action="pull-stock"]').click()
                await expect(page.locator("#notice")).to_have_text(
                    "Toaster -40%: 2 coupon(s) left of 2."
                )
                await expect(
                    waves.locator(f'[data-offer="{second}"] [data-field="left"]')
                ).to_have_text("2")
                await row.locator('[data-loc="delta"]').fill("1")
                await row.locator('[data-action="add-stock"]').click()
                await expect(row.locator('[data-field="sold_out_at"]')).to_have_text("not sold out")
                await expect(row.locator('[data-field="initial"]')).to_have_text("3")
                await _shot(page, "live-sale")
                await page.set_viewport_size({"width": 420, "height": 900})
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 420  # the waves' table scrolls in its card on a narrow screen
                await page.set_viewport_size({"width": 1100, "height": 900})

                # -- a group-buy campaign from the campaign form: its terms checked by the API
                await page.click('nav [data-nav="new"]')
                cform = page.locator("#campaign-form")
                await cform.locator('[data-loc="name"]').fill("Kitchen together")
                await cform.locator('[data-loc="offers.0.title"]').fill("Blender for 3")
                await cform.locator('[data-loc="offers.0.type"]').select_option("group_buy")
                await cform.locator('[data-loc="offers.0.category"]').fill("purifier_filter")
                await cform.locator('[data-loc="offers.0.surfaces"]').fill("tv_home_banner")
                await cform.locator('[data-loc="offers.0.price"]').fill("100")
                await cform.locator('[data-loc="offers.0.group.size"]').fill("3")
                await cform.locator('[data-loc="offers.0.group.window_s"]').fill("30")
                await cform.locator('[data-loc="offers.0.group.price"]').fill("70")
                # and a price cut beside it: 100 down to 60 in 2 helps
                await cform.locator('[data-action="add-offer"]').click()
                cut = {"title": "Mixer, cut it", "type": "price_cut", "category": "purifier_filter",
                       "surfaces": "tv_home_banner", "price": "100", "cut.floor": "60",
                       "cut.helps": "2", "cut.window_s": "600"}  # fmt: skip
                for key, text in cut.items():
                    where = cform.locator(f'[data-loc="offers.1.{key}"]')
                    if key == "type":
                        await where.select_option(text)
                    else:
                        await where.fill(text)
                # its published schedule, from the gateway, as it is typed
                schedule = cform.locator('[data-offer="1"] [data-metric="schedule"]')
                steps = " → ".join(f"{x:.2f}" for x in cut_schedule(100, 60, 2))
                await expect(schedule).to_have_text(f"Price after each help: {steps}")
                await cform.locator('[data-action="save"]').click()
                await expect(
                    cform.locator('[data-error-for="offers.0.group.window_s"]')
                ).to_contain_text("greater than or equal to 60")
                await _shot(page, "group-buy-form")
                await cform.locator('[data-loc="offers.0.group.window_s"]').fill("600")
                await cform.locator('[data-action="save"]').click()
                await expect(page.locator("#notice")).to_contain_text(
                    "Kitchen together: draft created"
                )
                listed = (await (await http.get("/v1/campaigns")).json())["campaigns"]
                group = next(c for c in listed if c["name"] == "Kitchen together")
                assert group["offers"][0]["group"] == {"size": 3, "window_s": 600, "price": 70}
                assert group["offers"][1]["cut"] == {"floor": 60, "helps": 2, "window_s": 600}
                gid, offer, cut_offer = group["id"], *(o["id"] for o in group["offers"])
                card = page.locator(f'#page-campaigns [data-campaign="{gid}"]')
                await card.locator('[data-action="launch"]').click()
                await expect(card.locator("[data-state]")).to_have_text("live")

                # one household starts a group, two join it with its code: formed
                start = SocialRequest(id=new_id(), device_id=devices[0], action="group_start",
                                      campaign_id=gid, offer_id=offer, at=utcnow())  # fmt: skip
                await dev.publish(settings.topics.social_up(devices[0]), codec.encode(start), qos=1)

                async def code() -> str | None:
                    row = await gw.db.call(
                        lambda s: s.one(
                            "SELECT code FROM social_groups WHERE campaign_id = ?", [gid]
                        )
                    )
                    return None if row is None else str(row["code"])

                await eventually(code, what="the group started")
                joined = await code()
                for d in devices[1:]:
                    join = SocialRequest(id=new_id(), device_id=d, action="group_join",
                                         code=joined, at=utcnow())  # fmt: skip
                    await dev.publish(settings.topics.social_up(d), codec.encode(join), qos=1)
                # the first household starts a cut, the second helps it once
                start = SocialRequest(id=new_id(), device_id=devices[0], action="cut_start",
                                      campaign_id=gid, offer_id=cut_offer, at=utcnow())  # fmt: skip
                await dev.publish(settings.topics.social_up(devices[0]), codec.encode(start), qos=1)

                async def share() -> str | None:
                    row = await gw.db.call(
                        lambda s: s.one("SELECT code FROM social_cuts WHERE campaign_id = ?", [gid])
                    )
                    return None if row is None else str(row["code"])

                await eventually(share, what="the cut started")
                help_ = SocialRequest(id=new_id(), device_id=devices[1], action="cut_help",
                                      code=await share(), at=utcnow())  # fmt: skip
                await dev.publish(settings.topics.social_up(devices[1]), codec.encode(help_), qos=1)
                await card.locator('[data-link="details"]').click()
                groups = page.locator(f'[data-metric="groups"] [data-offer="{offer}"]')
                await expect(groups.locator('[data-field="formed"]')).to_have_text("1")
                await expect(groups.locator('[data-field="seats_granted"]')).to_have_text("3")
                await expect(groups.locator('[data-field="conversion"]')).to_have_text("100.0%")
                cuts = page.locator(f'[data-metric="cuts"] [data-offer="{cut_offer}"]')
                await expect(cuts.locator('[data-field="helps"]')).to_have_text("1")
                reached = f"{price_after(100, 60, 2, 1):.2f}"  # the published schedule
                await expect(cuts.locator('[data-field="lowest_price"]')).to_have_text(reached)
                await _shot(page, "group-buy")

                # -- members: points issued and spent per tier
                assert (await http.post("/v1/members", json={"id": "m-1"})).status == 201
                for key, points in (("buy-1", 1200), ("perk-1", -200)):
                    resp = await http.post(
                        "/v1/members/m-1/points",
                        json={"kind": "purchase" if points > 0 else "spend",
                              "points": abs(points), "source": key},
                    )  # fmt: skip
                    assert resp.status == 201, await resp.text()
                await page.click('nav [data-nav="members"]')
                tiers = page.locator('[data-metric="tiers"]')
                await expect(tiers.locator('[data-metric="points-issued"] .value')).to_have_text(
                    "1200"
                )
                await expect(tiers.locator('[data-metric="points-spent"] .value')).to_have_text(
                    "200"
                )
                silver = tiers.locator('[data-tier="1"]')
                await expect(silver.locator('[data-field="members"]')).to_have_text("1")
                await expect(silver.locator('[data-field="issued"]')).to_have_text("1200")
                await _shot(page, "members")
            finally:
                await browser.close()
