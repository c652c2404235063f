"""The demo's social verdict and lines: a group not formed or a wave not sold out fails the
demo and says so (the happy path runs in tests/e2e/test_e2e_demo.py)."""

from __future__ import annotations

from typing import Any

from simulators.demo_social import social_lines, social_ok

FRIENDS = [
    {"household": 3, "tie": 0.65, "p_join": 0.81},
    {"household": 4, "tie": 0.7, "p_join": 0.76},
]
GROUP = {"code": "QB3H3JBN", "size": 3, "seats": 3, "formed": True, "coupons": 3}
WAVE = {
    "stock": 2,
    "wanted": 6,
    "granted": 2,
    "refused_at_gateway": 1,
    "held_at_edge": 3,
    "sold_out_seen": 6,
    "devices": 6,
    "sold_out": True,
}


def _report(group: dict[str, Any], wave: dict[str, Any]) -> dict[str, Any]:
    return {"social": {"friends": FRIENDS, "group": group, "wave": wave}}


def test_the_verdict_needs_the_group_formed_and_the_wave_sold_out() -> None:
    assert social_ok(_report(GROUP, WAVE))
    lines = social_lines(_report(GROUP, WAVE))
    assert "hh000003 (tie 0.65, p_join 0.81)" in lines[0]
    assert "seats 3/3, formed, coupons 3" in lines[0]
    assert lines[1] == "price cut: 0 friends helped, 129 -> - (floor 59)"  # none in the report
    assert "granted 2, refused by the gateway 1, held at the edge 3" in lines[2]
    assert lines[2].endswith("6/6 devices: sold out")
    failed = {"formed": False, "coupons": 0, "seats": 0, "error": "never got there"}
    assert not social_ok(_report(failed, WAVE))
    assert "seats 0/3, NOT formed" in social_lines(_report(failed, WAVE))[0]
    assert not social_ok(_report({**GROUP, "coupons": 2}, WAVE))  # a member without its coupon
    unsold = {**WAVE, "sold_out_seen": 5, "sold_out": False}
    assert not social_ok(_report(GROUP, unsold))
    assert social_lines(_report(GROUP, unsold))[2].endswith("5/6 devices: NOT sold out")
    assert not social_ok({}) and social_lines({}) == []
