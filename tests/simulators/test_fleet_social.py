"""The fleet's group buys: the plan drawn from the world's friendships is the same for a seed,
the scenario's `[social]` table reaches the options, and a small fleet run (worker processes,
the gateway process) forms exactly the planned full groups and expires the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators import scenario
from simulators.fleet import run_fleet, succeeded
from simulators.fleet_social import groups_ok, plan_groups
from simulators.options import FleetOptions
from simulators.world import make_friendships, make_world

SCENARIO = """
seed = 4
households = 12
drain_timeout_s = 60
[usage]
rounds = 3
duration_s = 1.5
signals_per_round = 2
[mix]
profiles = ["phone"]
[social]
group_size = 3
window_s = 60
"""


def test_the_plan_is_the_worlds_friendships_and_the_same_for_a_seed() -> None:
    world = make_world(4, 13)
    ties = make_friendships(world)
    plan = plan_groups(world, list(range(12)), 3, 4)
    assert plan == plan_groups(world, list(range(12)), 3, 4)
    assert plan != plan_groups(world, list(range(12)), 3, 5)
    seats = [g.starter for g in plan] + [j for g in plan for j in g.joiners]
    assert len(seats) == len(set(seats))  # one seat per household
    for g in plan:
        assert len(g.joiners) <= 2 and all(ties.tie(g.starter, j) > 0 for j in g.joiners)
    assert 0 < sum(g.full for g in plan) < len(plan)  # seed 4: some form, some expire


def test_the_social_table_reaches_the_options_and_bad_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    assert scenario.options(path).group_buys == (3, 60.0, False)
    path.write_text(SCENARIO.replace("group_size = 3", "group_size = 1"), encoding="utf-8")
    with pytest.raises(scenario.ScenarioError, match=r"social\.group_size"):
        scenario.options(path)
    with pytest.raises(ValueError, match="unsharded"):
        FleetOptions(households=4, group_buys=(3, 60.0, False), shard=(1, 2))
    with pytest.raises(ValueError, match="a window 60"):
        FleetOptions(households=4, group_buys=(3, 5.0, False))
    report = {"formed": 1, "planned_formed": 1, "planned_expired": 1, "groups_started": 2}
    report |= {"group_size": 3, "seats_granted": 3, "waited_for_expiry": False}
    assert groups_ok({**report, "open": 1, "expired": 0})
    assert not groups_ok({**report, "open": 0, "expired": 1})  # expired before the window
    assert groups_ok({**report, "open": 0, "expired": 1, "waited_for_expiry": True})
    assert not groups_ok({**report, "open": 1, "expired": 0, "seats_granted": 4})
    assert groups_ok(None)


@pytest.mark.integration
async def test_a_fleet_forms_the_planned_groups_and_expires_the_others(tmp_path: Path) -> None:
    path = tmp_path / "social.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    options = scenario.options(path, data_dir=tmp_path / "run", procs=2)
    report = await run_fleet(options)
    social = report["social"]
    plan = plan_groups(make_world(4, 13), list(range(12)), 3, 4)
    assert social["groups_started"] == len(plan)
    assert social["planned_formed"] == sum(g.full for g in plan) > 0
    assert social["planned_expired"] == len(plan) - social["planned_formed"] > 0
    # the others stay open until their 60 s window closes (expiry: tests/gateway)
    assert (social["formed"], social["expired"], social["open"]) == (
        social["planned_formed"],
        0,
        social["planned_expired"],
    )
    assert social["seats_granted"] == 3 * social["formed"]
    assert social["seats_released"] == 0
    assert social["joins_refused"] == 0
    assert succeeded(report), report
