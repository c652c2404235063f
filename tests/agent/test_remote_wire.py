"""The thin device's rank request and the coordinator's result on the wire: round trips, and
hostile bodies refused with what and where (never an exception other than RemoteRankError)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from agent.decide.remote import (
    MAX_REMOTE_OFFERS,
    RankRequest,
    RemoteRankError,
    parse_request,
    parse_result,
)
from agent.decide.thin import rank_request
from tests.support.builders import NOW as BUILDER_NOW
from tests.support.builders import make_offer

NOW = BUILDER_NOW
OFFERS = [make_offer("a", priority=70), make_offer("b", priority=20, category="music")]


def _request() -> RankRequest:
    request = rank_request(
        OFFERS,
        device_id="speaker-1",
        profile="speaker",
        surface=OFFERS[0].surfaces[0],
        now=NOW,
        local_hour=20.5,
        local_weekday=4,
        personalized=True,
    )
    assert request is not None
    return request


def test_a_request_round_trips_with_the_scoring_fields() -> None:
    request = _request()
    back = parse_request(json.loads(json.dumps(request.to_wire())))
    assert [o.id for o in back.offers] == ["a", "b"]  # the highest priority first
    for mine, theirs in zip(request.offers, back.offers, strict=True):
        for name in ("campaign_id", "type", "category", "price", "discount", "priority"):
            assert getattr(mine, name) == getattr(theirs, name)
    assert (back.local_hour, back.local_weekday, back.personalized) == (20.5, 4, True)


def test_nothing_showable_asks_nothing() -> None:
    assert rank_request(OFFERS, device_id="s", profile="speaker", surface="nowhere", now=NOW,
                        local_hour=1.0, local_weekday=0, personalized=False) is None  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda b: b.update(offers="many"), "offers"),
        (lambda b: b.update(offers=[{}] * (MAX_REMOTE_OFFERS + 1)), "offers"),
        (lambda b: b["offers"][0].update(priority=101), "priority"),
        (lambda b: b["offers"][0].update(surfaces=["x"]), "surfaces"),
        (lambda b: b["offers"][1].update(type="bribe"), "type"),
        (lambda b: b.update(local_hour=25), "local_hour"),
        (lambda b: b.pop("surface"), "surface"),
    ],
)
def test_a_hostile_request_is_refused_naming_the_field(mutate: Any, where: str) -> None:
    body = _request().to_wire()
    mutate(body)
    with pytest.raises(RemoteRankError, match=where):
        parse_request(body)


def test_a_result_keeps_only_finite_scores_of_offers_asked_about() -> None:
    body = {"scores": {"a": 0.4, "b": math.inf, "zz": 0.9, "c": "high"}, "model_version": 3}
    result = parse_result(body, OFFERS)
    assert dict(result.scores) == {"a": 0.4}
    assert result.model_version == 3
    bad_bodies: list[Any] = [[], {"scores": 1}, {"scores": {}, "model_version": True}]
    for bad in bad_bodies:
        with pytest.raises(RemoteRankError):
            parse_result(bad, OFFERS)
