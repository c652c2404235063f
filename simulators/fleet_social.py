"""The fleet's group buys: households start groups and friends join with the shared code.

With `FleetOptions.group_buys` = (size, window s, wait for expiry), after the usage rounds
the operator launches one group-buy campaign; who starts a group and which friends join is
drawn in the fleet process from the synthetic world (`simulators.world.social`: the
friendships among the fleet's personas, `p_start_group`, `p_join_group` by tie), seeded, so
the plan is the same for a seed. Each starter's device (through its worker) starts a group
and returns the code; each joining friend's device joins with it. The gateway's figures must
be the plan's: every full group formed, and every other group still open or, when the run
waits out the window (at least the gateway's 60 s), expired with its seats released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import numpy as np

from protocol.ids import format_time, utcnow
from simulators.household import DeviceRun
from simulators.launches import surfaces
from simulators.options import FleetOptions
from simulators.pace import personas
from simulators.world import World
from simulators.world.social import Friendships, make_friendships, p_join_group, p_start_group


class Caller(Protocol):
    async def call(self, method: str, path: str, body: object | None = None) -> Any: ...


class Commander(Protocol):
    """A fleet worker process: `call(cmd, **args)` runs a command on its households."""

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]: ...


class _Plan(Protocol):
    @property
    def households(self) -> list[int]: ...


class FleetWorker(Commander, Protocol):
    """`simulators.fleet_procs.WorkerProcess`, as seen here (no import: the worker imports
    this module)."""

    @property
    def plan(self) -> _Plan: ...


@dataclass(frozen=True, slots=True)
class PlannedGroup:
    starter: int
    """The starting household's ordinal in the fleet."""
    joiners: tuple[int, ...]
    size: int

    @property
    def full(self) -> bool:
        return len(self.joiners) == self.size - 1


def plan_groups(
    world: World, personas: Sequence[int], size: int, seed: int, ties: Friendships | None = None
) -> list[PlannedGroup]:
    """Who starts a group (each household with `p_start_group`) and which of its friends in
    the fleet join (strongest tie first, each with `p_join_group`, until full). A household
    holds one seat of the offer: a starter joins no other group, a friend joins one group."""
    ties = ties or make_friendships(world)
    rng = np.random.default_rng([seed, 19])
    ordinal = {p: i for i, p in enumerate(personas)}
    h = world.households
    starting = rng.random(len(personas)) < p_start_group(h, np.asarray(personas, dtype=np.int64))
    taken = {i for i, s in enumerate(starting) if s}
    groups = []
    for i in sorted(taken):
        joined: list[int] = []
        for friend, tie in ties.of(personas[i]):
            if len(joined) == size - 1:
                break
            j = ordinal.get(friend)
            if j is None or j in taken:
                continue
            if rng.random() < float(p_join_group(h, friend, tie)[0]):
                joined.append(j)
                taken.add(j)
        groups.append(PlannedGroup(i, tuple(joined), size))
    return groups


def group_campaign(surfaces: list[str], size: int, window_s: float) -> dict[str, Any]:
    now = utcnow()
    return {
        "name": "Fleet group buy",
        "cohorts": ["all"],
        "offers": [
            {
                "type": "group_buy",
                "title": f"Smart plug at -40% for {size} households",
                "category": "smart_home",
                "price": 99.0,
                "discount": 0.4,
                "surfaces": surfaces,
                "starts_at": format_time(now - timedelta(minutes=1)),
                "expires_at": format_time(now + timedelta(days=1)),
                "group": {"size": size, "window_s": round(window_s), "price": 59.0},
            }
        ],
    }


async def run_groups(
    operator: Caller,
    owner: dict[int, Commander],
    groups: Sequence[PlannedGroup],
    surfaces: list[str],
    *,
    window_s: float,
    expire: bool = False,
) -> dict[str, Any]:
    """Launch the campaign, start and join as planned (`owner`: each household's worker),
    wait out the window; the report."""
    size = groups[0].size if groups else 3
    created = await operator.call("POST", "/v1/campaigns", group_campaign(surfaces, size, window_s))
    campaign, offer = created["id"], created["offers"][0]["id"]
    await operator.call("POST", f"/v1/campaigns/{campaign}/launch")
    began = time.monotonic()

    async def one(group: PlannedGroup) -> list[str]:
        started = await owner[group.starter].call(
            "group_start", household=group.starter, offer_id=offer
        )
        answers = []
        for j in group.joiners:
            joined = await owner[j].call("group_join", household=j, code=started["code"])
            answers.append(str(joined.get("status", "")))
        return answers

    answers = await asyncio.gather(*(one(g) for g in groups))
    planned_formed = sum(g.full for g in groups)
    figures: dict[str, Any] = {}
    # every full group formed; with `expire`, also until the window closed on the others
    deadline = began + (window_s if expire else 0.0) + 30.0
    while time.monotonic() < deadline:
        got = await operator.call("GET", f"/v1/social/groups?campaign={campaign}")
        figures = got["offers"][0] if got["offers"] else {}
        formed, still_open = int(figures.get("formed", 0)), int(figures.get("open", 0))
        if formed >= planned_formed and (not expire or not still_open):
            break
        await asyncio.sleep(0.5)
    return {
        "group_size": size,
        "window_s": window_s,
        "waited_for_expiry": expire,
        "groups_started": len(groups),
        "joins": sum(len(g.joiners) for g in groups),
        "joins_refused": sum(a.count("refused") for a in answers),
        "planned_formed": planned_formed,
        "planned_expired": len(groups) - planned_formed,
        "formed": int(figures.get("formed", 0)),
        "expired": int(figures.get("expired", 0)),
        "open": int(figures.get("open", 0)),
        "seats_granted": int(figures.get("seats_granted", 0)),
        "seats_released": int(figures.get("seats_released", 0)),
    }


def groups_ok(social: dict[str, Any] | None) -> bool:
    """The gateway formed exactly the planned full groups; the others expired (when the run
    waited out the window) or are still open."""
    if not social:
        return True
    waiting = social["expired"] if social.get("waited_for_expiry") else social["open"]
    return bool(
        social["formed"] == social["planned_formed"]
        and waiting == social["planned_expired"]
        and social["formed"] + social["expired"] + social["open"] == social["groups_started"]
        and social["seats_granted"] == social["planned_formed"] * social["group_size"]
    )


async def device_social(
    runs: Sequence[DeviceRun], cmd: str, args: dict[str, Any]
) -> dict[str, Any]:
    """In a worker: one household's device (a phone if it has one) starts a group (answers
    its code) or joins one with a code (answers the gateway's answer), within 20 s."""
    run = next((r for r in runs if r.spec.profile == "phone"), runs[0])
    agent = run.agent
    deadline = time.monotonic() + 20.0
    if cmd == "group_start":
        while agent.parts.offers.get(args["offer_id"]) is None:  # the launch reached it
            if time.monotonic() > deadline:
                raise RuntimeError(f"{run.spec.device_id} never held {args['offer_id']}")
            await asyncio.sleep(0.1)
        shown = await agent.social_request("group", "start", offer_id=args["offer_id"])
    else:
        shown = await agent.social_request("group", "join", code=args["code"])
    request_id = shown["request_id"]
    while time.monotonic() < deadline:
        shown = await agent.social_show(request_id) or {}
        if shown.get("code") if cmd == "group_start" else "answer" in shown:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"{run.spec.device_id}: {cmd} not answered: {shown}")
    answer = shown.get("answer", {})
    return {"device_id": run.spec.device_id, "code": shown.get("code"), **answer}


async def fleet_groups(
    options: FleetOptions, world: World, workers: Sequence[FleetWorker], operator: Caller
) -> dict[str, Any]:
    """The fleet's group buys (`options.group_buys`), planned and run; the report's `social`."""
    assert options.group_buys is not None
    size, window_s, expire = options.group_buys
    chosen = personas(options)[: options.households]
    groups = plan_groups(world, chosen, size, options.seed)
    owner: dict[int, Commander] = {hh: w for w in workers for hh in w.plan.households}
    return await run_groups(
        operator, owner, groups, surfaces(options.profiles), window_s=window_s, expire=expire
    )
