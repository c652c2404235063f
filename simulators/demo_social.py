"""The demo's social commerce: three friends' households form a group buy and cut a price,
and a live-sale wave sells out.

Two friends of the demo household (the world's friendships: the two likeliest to join its
group) run one phone each, a cheap "device-only" household. Through the gateway's HTTP API the
operator launches a group-buy campaign (groups of 3) and a live sale whose one wave opens
`WAVE_IN_S` after its launch with `WAVE_STOCK` coupons. The household's TV starts a group
through its local API and shows the code; each friend's phone joins with it through its own
local API; every member's device then shows the group formed with its coupon. The TV starts
a price cut the same way and both friends help it down to its floor. At the wave,
every phone, TV and hub of the three households claims the drop, a fraction of a second
apart (the flash crowd): the stock is granted, the rest refused or held at the edge, and every
device ends up holding the gateway's signed sold-out notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from agent.api.owners import admin_headers
from agent.errors import AgentError
from agent.offers.claims import NotClaimable
from protocol.ids import format_time, utcnow
from simulators.household import DeviceRun, DeviceSpec, Household
from simulators.world import World
from simulators.world.social import joiners, make_friendships

GROUP_SIZE = 3
WAVE_IN_S = 8.0
"""The wave opens this long after the sale's launch (the gateway's time sample goes out 5 s
before it, to devices connected by then)."""
WAVE_STOCK = 2
CLAIM_GAP_S = 0.35
"""The flash crowd: each claimer taps this long after the previous one."""
CLAIMERS = ("hub", "tv", "phone")
CUT_PRICE = 129.0
CUT_FLOOR = 59.0


class Caller(Protocol):
    async def call(self, method: str, path: str, body: object | None = None) -> Any: ...


class SocialError(RuntimeError):
    """The social story could not run (a device never showed the code, a wave never opened)."""


def friends_of(world: World, household: int, count: int = GROUP_SIZE - 1) -> list[dict[str, Any]]:
    """The friends who join the household's group: the likeliest joiners among its friends."""
    return joiners(world, make_friendships(world), household, count)


@contextlib.asynccontextmanager
async def friend_households(
    world: World, friends: Sequence[dict[str, Any]], *, broker: str, trust: Path, data_dir: Path
) -> AsyncIterator[list[Household]]:
    """One phone per friend household, with a local API on the loopback."""
    async with contextlib.AsyncExitStack() as stack:
        households = []
        for friend in friends:
            hh = world.persona(friend["household"]).household_id
            household = Household(
                world,
                friend["household"],
                broker=broker,
                trust=trust,
                data_dir=data_dir,
                devices=[DeviceSpec(f"{hh}-phone", "phone", via_http=True)],
            )
            households.append(await stack.enter_async_context(household))
        yield households


class LocalApp:
    """An app on the device: calls to the agent's local API with its owner's token."""

    def __init__(self, session: aiohttp.ClientSession, run: DeviceRun) -> None:
        if run.agent.api_port is None:
            raise SocialError(f"{run.spec.device_id} has no local API")
        self.session = session
        self.run = run
        self.base = f"http://127.0.0.1:{run.agent.api_port}"
        self.headers: dict[str, str] | None = None

    async def call(self, method: str, path: str, body: object | None = None) -> Any:
        if self.headers is None:
            self.headers = await asyncio.to_thread(admin_headers, self.run.agent.settings.data_dir)
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise SocialError(f"{self.run.spec.device_id}: {method} {path} -> {data}")
            return data


class SocialStory:
    """Launch the campaigns, form the group, sell the wave out; then `report()`."""

    def __init__(self, operator: Caller, friends: Sequence[dict[str, Any]]) -> None:
        self.operator = operator
        self.friends = list(friends)
        self.group_campaign = ""
        self.group_offer = ""
        self.cut_offer = ""
        self.cut: dict[str, Any] = {}
        self.sale = ""
        self.wave_offer = ""
        self.wave_at: datetime | None = None
        self.group: dict[str, Any] = {"formed": False}
        self.wave: dict[str, Any] = {"sold_out": False}

    async def launch(self, surfaces: list[str]) -> None:
        now = utcnow()
        group = {
            "name": "Group buy: smart plug for three households",
            "cohorts": ["all"],
            "offers": [
                {
                    "type": "group_buy",
                    "title": "Smart plug at -40% when 3 households join",
                    "category": "smart_home",
                    "price": 99.0,
                    "discount": 0.4,
                    "priority": 20,
                    "surfaces": surfaces,
                    "starts_at": format_time(now - timedelta(minutes=1)),
                    "expires_at": format_time(now + timedelta(days=1)),
                    "group": {"size": GROUP_SIZE, "window_s": 600, "price": 59.0},
                },
                {
                    "type": "price_cut",
                    "title": "Water filter: friends cut the price to 59",
                    "category": "water_filter",
                    "price": CUT_PRICE,
                    "priority": 20,
                    "surfaces": surfaces,
                    "starts_at": format_time(now - timedelta(minutes=1)),
                    "expires_at": format_time(now + timedelta(days=1)),
                    "cut": {"floor": CUT_FLOOR, "helps": GROUP_SIZE - 1, "window_s": 600},
                },
            ],
        }
        created = await self.operator.call("POST", "/v1/campaigns", group)
        self.group_campaign = created["id"]
        self.group_offer = created["offers"][0]["id"]
        self.cut_offer = created["offers"][1]["id"]
        await self.operator.call("POST", f"/v1/campaigns/{self.group_campaign}/launch")
        self.wave_at = now + timedelta(seconds=WAVE_IN_S)
        sale = {
            "name": "Live sale: the demo's coupon drop",
            "cohorts": ["all"],
            "waves": [
                {
                    "at": format_time(self.wave_at),
                    "offers": [
                        {
                            "type": "coupon",
                            "title": "Live drop: air purifier at -50%",
                            "category": "appliances",
                            "price": 1299.0,
                            "discount": 0.5,
                            "priority": 20,
                            "surfaces": surfaces,
                            "limited": True,
                            "stock": WAVE_STOCK,
                        }
                    ],
                }
            ],
        }
        created = await self.operator.call("POST", "/v1/live-sales", sale)
        self.sale = created["campaign"]["id"]
        self.wave_offer = created["campaign"]["offers"][0]["id"]
        await self.operator.call("POST", f"/v1/campaigns/{self.sale}/launch")

    async def form_group(
        self, starter: LocalApp, joiners: Sequence[LocalApp], timeout: float = 15.0
    ) -> None:
        """The starter's device starts a group and shows its code; each friend's device joins
        with the code; every member's device shows the group formed and its own coupon. What
        went wrong (a code never shown, a refused call) is the report's `group.error`."""
        try:
            await self._form_group(starter, joiners, timeout)
        except SocialError as exc:
            self.group = {"formed": False, "coupons": 0, "seats": 0, "error": str(exc)}

    async def _form_group(
        self, starter: LocalApp, joiners: Sequence[LocalApp], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while starter.run.agent.parts.offers.get(self.group_offer) is None:
            if time.monotonic() > deadline:
                raise SocialError(f"{starter.run.spec.device_id} never held {self.group_offer}")
            await asyncio.sleep(0.05)
        started = await starter.call("POST", "/v1/groups", {"offer_id": self.group_offer})
        shown = await _until(
            starter, f"/v1/groups/{started['request_id']}", lambda s: bool(s.get("code")), deadline
        )
        code, ref = shown["code"], shown["ref"]
        answers = []
        for app in joiners:
            joined = await app.call("POST", "/v1/groups", {"code": code})
            answers.append(
                await _until(
                    app,
                    f"/v1/groups/{joined['request_id']}",
                    lambda s: "answer" in s or "status" in s,
                    deadline,
                )
            )
        members = []
        for app, friend in zip([starter, *joiners], [None, *self.friends], strict=True):
            try:
                state = await _until(
                    app, f"/v1/groups/{ref}", lambda s: s.get("status") != "open", deadline
                )
            except SocialError:
                state = await app.call("GET", f"/v1/groups/{ref}")
            members.append(
                {
                    "device_id": app.run.spec.device_id,
                    "tie": friend["tie"] if friend else None,
                    "p_join": friend["p_join"] if friend else None,
                    "status": state.get("status"),
                    "seats": state.get("seats"),
                    "coupon": state.get("coupon"),
                }
            )
        figures = await self.operator.call(
            "GET", f"/v1/social/groups?campaign={self.group_campaign}"
        )
        formed = all(m["status"] == "formed" and m["coupon"] for m in members)
        self.group = {
            "offer_id": self.group_offer,
            "size": GROUP_SIZE,
            "code": code,
            "seats": max((m["seats"] or 0) for m in members),
            "formed": formed,
            "coupons": sum(1 for m in members if m["coupon"]),
            "members": members,
            "join_answers": [a.get("answer", {}).get("status", "") for a in answers],
            "gateway": figures["offers"],
        }

    async def cut_price(
        self, starter: LocalApp, helpers: Sequence[LocalApp], timeout: float = 15.0
    ) -> None:
        """The starter's device starts a price cut and shows its code; each friend's device
        helps once with it; the price falls along the published schedule to the floor."""
        try:
            code, answers = await self._cut_price(starter, helpers, timeout)
        except SocialError as exc:
            self.cut = {"helps": 0, "error": str(exc)}
            return
        got = await self.operator.call("GET", f"/v1/social/cuts?campaign={self.group_campaign}")
        (figures,) = got["offers"]
        self.cut = {
            "offer_id": self.cut_offer,
            "code": code,
            "price": CUT_PRICE,
            "floor": CUT_FLOOR,
            "helps": int(figures["helps"]),
            "help_answers": [a["answer"]["status"] for a in answers],
            "prices_seen": [a.get("price") for a in answers],
            "price_reached": figures["lowest_price"],
            "gateway": figures,
        }

    async def _cut_price(
        self, starter: LocalApp, helpers: Sequence[LocalApp], timeout: float
    ) -> tuple[str, list[dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while starter.run.agent.parts.offers.get(self.cut_offer) is None:
            if time.monotonic() > deadline:
                raise SocialError(f"{starter.run.spec.device_id} never held {self.cut_offer}")
            await asyncio.sleep(0.05)
        started = await starter.call("POST", "/v1/cuts", {"offer_id": self.cut_offer})
        path = f"/v1/cuts/{started['request_id']}"
        shown = await _until(starter, path, lambda s: bool(s.get("code")), deadline)
        answers = []
        for app in helpers:
            helped = await app.call("POST", "/v1/cuts", {"code": shown["code"]})
            path = f"/v1/cuts/{helped['request_id']}"
            answers.append(await _until(app, path, lambda s: "answer" in s, deadline))
        return str(shown["code"]), answers

    async def sell_out(self, claimers: Sequence[DeviceRun], timeout: float = 20.0) -> None:
        """At the wave, every claimer claims the drop `CLAIM_GAP_S` after the previous one;
        then wait until every device holds the signed sold-out notice."""
        assert self.wave_at is not None
        deadline = time.monotonic() + WAVE_IN_S + timeout
        offer = self.wave_offer
        early = 0
        await asyncio.sleep(max(0.0, (self.wave_at - utcnow()).total_seconds()))  # the wave
        states: list[str] = []
        for i, run in enumerate(claimers):
            if i:
                await asyncio.sleep(CLAIM_GAP_S)
            while True:
                try:
                    row, _ = await run.agent.claim(offer)
                    states.append(await _claim_state(run, row["id"], deadline))
                    break
                except NotClaimable as exc:
                    if "sealed" in exc.why and time.monotonic() < deadline:
                        early += 1
                        await asyncio.sleep(0.02)
                        continue
                    states.append("held at the edge" if "sold out" in exc.why else exc.why)
                    break
                except AgentError as exc:  # not held yet
                    if time.monotonic() >= deadline:
                        states.append(f"never held: {exc}")
                        break
                    await asyncio.sleep(0.05)
        while time.monotonic() < deadline:
            if all(offer in run.agent.parts.live.sold_out for run in claimers):
                break
            await asyncio.sleep(0.05)
        seen = sum(offer in run.agent.parts.live.sold_out for run in claimers)
        sale = await self.operator.call("GET", f"/v1/live-sales/{self.sale}")
        (figures,) = [o for w in sale["waves"] for o in w["offers"] if o["offer_id"] == offer]
        granted = states.count("granted")
        self.wave = {
            "offer_id": offer,
            "at": format_time(self.wave_at),
            "stock": WAVE_STOCK,
            "wanted": len(claimers),
            "granted": granted,
            "refused_at_gateway": states.count("refused"),
            "held_at_edge": states.count("held at the edge"),
            "claims_held_sealed": early,
            "sold_out_seen": seen,
            "devices": len(claimers),
            "claims": dict(zip((r.spec.device_id for r in claimers), states, strict=True)),
            "gateway": figures,
            "sold_out": bool(
                granted == WAVE_STOCK and seen == len(claimers) and figures.get("left") == 0
            ),
        }

    def report(self) -> dict[str, Any]:
        return {"friends": self.friends, "group": self.group, "cut": self.cut, "wave": self.wave}


def social_ok(report: dict[str, Any]) -> bool:
    """The group formed (every member's coupon) and the wave sold out (seen by every device)."""
    social = report.get("social") or {}
    group, wave = social.get("group") or {}, social.get("wave") or {}
    return bool(
        group.get("formed")
        and group.get("coupons") == GROUP_SIZE
        and group.get("seats") == GROUP_SIZE
        and wave.get("sold_out")
    )


def social_lines(report: dict[str, Any]) -> list[str]:
    """The short text report's lines for the group and the wave."""
    social = report.get("social")
    if not social:
        return []
    g, c, w = social["group"], social.get("cut") or {}, social["wave"]
    friends = ", ".join(
        f"hh{f['household']:06d} (tie {f['tie']:.2f}, p_join {f['p_join']:.2f})"
        for f in social["friends"]
    )
    return [
        f"group buy: code {g.get('code', '-')} shared with {friends}; seats"
        f" {g.get('seats', 0)}/{g.get('size', GROUP_SIZE)},"
        f" {'formed' if g.get('formed') else 'NOT formed'}, coupons {g.get('coupons', 0)}",
        f"price cut: {c.get('helps', 0)} friends helped, {CUT_PRICE:g} -> "
        f"{c.get('price_reached', '-')} (floor {CUT_FLOOR:g})",
        f"live wave: stock {w.get('stock', '-')}, {w.get('wanted', 0)} devices claimed,"
        f" granted {w.get('granted', 0)}, refused by the gateway {w.get('refused_at_gateway', 0)},"
        f" held at the edge {w.get('held_at_edge', 0)}; sold-out seen by"
        f" {w.get('sold_out_seen', 0)}/{w.get('devices', 0)} devices:"
        f" {'sold out' if w.get('sold_out') else 'NOT sold out'}",
    ]


async def _until(app: LocalApp, path: str, done: Any, deadline: float) -> dict[str, Any]:
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = await app.call("GET", path)
        if done(last):
            return last
        await asyncio.sleep(0.05)
    raise SocialError(f"{app.run.spec.device_id}: {path} never got there: {last}")


async def _claim_state(run: DeviceRun, claim_id: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        row = await run.agent.get_claim(claim_id)
        if row is not None and row["state"] != "pending":
            return str(row["state"])
        await asyncio.sleep(0.02)
    return "pending"
