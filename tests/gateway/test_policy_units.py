"""The gateway's side of issue 18 without a network: policy scopes checked with the field
named, documents built per cohort with every campaign's rules, and explanations folded so that
each reached device counts once; stored once per batch (SQLite here, PostgreSQL in
`test_policy_explanations.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_gateway.campaigns.explain import explain
from cloud_gateway.campaigns.policy import check_scope, documents
from cloud_gateway.db.explain import explanation_counts
from cloud_gateway.db.ingest import store_batch
from cloud_gateway.db.store import Store
from cloud_gateway.errors import InvalidInput
from protocol.envelopes import Batch, PolicyRules, Signal
from protocol.ids import new_id, utcnow
from protocol.vocabulary import EXPLAIN_KIND, EXPLAIN_STAGES


def test_a_campaign_policy_sets_only_campaign_rules_and_names_the_field() -> None:
    check_scope("campaign", "c1", PolicyRules(campaign_per_day=2, holdout=0.1))
    with pytest.raises(InvalidInput) as caught:
        check_scope("campaign", "c1", PolicyRules(global_per_day=5, quiet_hours=[]))
    assert [e["loc"] for e in caught.value.errors or []] == ["global_per_day", "quiet_hours"]
    with pytest.raises(InvalidInput) as caught:
        check_scope("profile", "Not A Profile", PolicyRules())
    assert (caught.value.errors or [])[0]["loc"] == "name"
    with pytest.raises(InvalidInput):
        check_scope("household", "x", PolicyRules())
    # household caps are set per profile or cohort (a home's coordinator applies its own)
    household = PolicyRules.model_validate({"household": {"per_day": 3}})
    check_scope("profile", "hub", household)
    with pytest.raises(InvalidInput) as caught:
        check_scope("campaign", "c1", household)
    assert [e["loc"] for e in caught.value.errors or []] == ["household"]


def test_every_cohort_gets_its_rules_and_every_campaign_rule() -> None:
    policies = [
        {"scope": "profile", "name": "tv", "rules": {"global_per_day": 5}},
        {"scope": "profile", "name": "hub", "rules": {"household": {"offer_window_s": 60}}},
        {"scope": "cohort", "name": "region:x", "rules": {"quiet_hours": []}},
        {"scope": "campaign", "name": "c1", "rules": {"holdout": 0.2}},
    ]
    now = utcnow()
    cohorts = {"all", "profile:tv", "profile:hub", "region:x"}
    docs = {d.cohort: d for d in documents(policies, cohorts, 7, now)}
    assert set(docs) == cohorts
    household = docs["profile:hub"].rules.household
    assert household is not None and household.offer_window_s == 60
    assert docs["profile:tv"].rules.household is None
    assert docs["profile:tv"].rules.global_per_day == 5
    assert docs["region:x"].rules.quiet_hours == []
    assert docs["all"].rules == PolicyRules()  # `all` carries only the campaign rules
    assert {d.version for d in docs.values()} == {7}
    assert all(d.campaigns["c1"].holdout == 0.2 for d in docs.values())


def test_each_reached_device_counts_once_under_shown_or_its_furthest_stage() -> None:
    rows = [
        ("d1", "shown", 1),
        ("d1", "quiet_hours", 9),  # shown once: shown
        ("d2", "surface", 50),
        ("d2", "cap", 1),  # the furthest stage wins, not the most frequent
        ("d3", "consent", 4),
        ("d4", "not_a_stage", 3),  # a newer agent's outcome: not counted
    ]
    got = explain(rows)
    assert (got.reached, got.shown) == (3, 1)
    assert {k: v for k, v in got.held.items() if v} == {"cap": 1, "consent": 1}
    assert got.shown + sum(got.held.values()) == got.reached
    assert set(got.held) == set(EXPLAIN_STAGES)
    assert got.decisions["surface"] == 50
    assert got.summary == "reached 3 devices; 1 shown; 1 without consent; 1 capped"
    assert explain([]).summary == "reached 0 devices; 0 shown"


def test_explanations_are_stored_once_per_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    attrs = {"campaign_id": "c1", "cap": 3, "shown": 0, "rank": True, "holdout": 2.5}
    signal = Signal(id=new_id(), kind=EXPLAIN_KIND, at=utcnow(), attrs=attrs)
    other = Signal(id=new_id(), kind="app_open", at=utcnow(), attrs={"campaign_id": "c1"})
    batch = Batch(
        device_id="tv-0001", seq=1, sent_at=utcnow(), agent_version="1", signals=[signal, other]
    )
    assert store_batch(store, "tv-0001", batch, utcnow())
    assert not store_batch(store, "tv-0001", batch, utcnow())
    # zero, booleans and fractions are not counts
    assert explanation_counts(store, "c1") == [("tv-0001", "cap", 3)]
    later = batch.model_copy(update={"seq": 2, "signals": [signal.model_copy(update={"id": "x"})]})
    assert store_batch(store, "tv-0001", later, utcnow())
    assert explanation_counts(store, "c1") == [("tv-0001", "cap", 6)]
    store.close()
