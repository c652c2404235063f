"""The operators' policy on the device (issue 18): signed documents verified, kept across
restarts and enforced with no link at all; forged, foreign and older ones refused and counted;
the version in force reported in the status and the birth. And the explanations: every
decision puts each campaign under `shown` or one stage, and the counts go into the outbox
only with analytics consent."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_settings
from agent.decide.cloud_policy import HouseholdPolicy, merge
from agent.decide.explain import ExplainTally
from agent.decide.policy import CapLimits, QuietWindow
from agent.household.state import HouseholdCaps, caps_from
from agent.intake.explanations import ExplainReporter
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import KeyList, PolicyDocument, PolicyRules
from protocol.ids import new_id, utcnow
from protocol.signing import Signer
from protocol.vocabulary import EXPLAIN_KIND, PROFILES
from tests.support.local_device import SURFACE, running_device

CONSENT = {"analytics": True, "personalization": False, "marketing": True}
ALWAYS_QUIET = [{"start": "00:00", "end": "12:00"}, {"start": "12:00", "end": "00:00"}]


def doc(cohort: str, version: int, **rules: Any) -> PolicyDocument:
    campaigns = rules.pop("campaigns", {})
    now = utcnow()
    return PolicyDocument(
        id=new_id(),
        cohort=cohort,
        version=version,
        issued_at=now,
        expires_at=now + timedelta(days=1),
        rules=PolicyRules.model_validate(rules),
        campaigns={k: PolicyRules.model_validate(v) for k, v in campaigns.items()},
    )


def signed(signer: Signer, document: PolicyDocument) -> bytes:
    return codec.dumps(signer.sign(document.to_wire()))


def test_the_most_specific_layer_wins_and_unset_rules_keep_the_layer_below() -> None:
    base = CapLimits(offer_per_day=3, global_per_day=50)
    quiet = (QuietWindow(22 * 60, 8 * 60),)
    docs = {
        "all": doc("all", 4, global_per_day=20, holdout=0.05, quiet_hours=[]),
        "profile:tv": doc("profile:tv", 5, global_per_day=10, campaigns={"c-a": {"holdout": 0.5}}),
        "region:x": doc("region:x", 3, offer_per_day=1),
    }
    policy = merge(base, quiet, "tv", ["all", "profile:tv", "region:x"], docs)
    assert policy.limits.global_per_day == 10  # profile:tv over all
    assert policy.limits.offer_per_day == 1  # the other cohort over both
    assert policy.quiet == ()  # `[]` clears the profile's quiet hours
    assert policy.holdout is not None
    assert policy.holdout.floor == 0.05
    assert dict(policy.holdout.by_campaign) == {"c-a": 0.5}
    assert policy.version == 5  # campaign rules and version: the newest document's
    # a document of a cohort the device is not in does not apply
    assert merge(base, quiet, "tv", ["all"], {"region:x": docs["region:x"]}).version == 0
    assert merge(base, quiet, "tv", ["all"], {}).limits is base


def test_min_score_layers_over_the_profiles_and_campaigns_replace_it_for_their_offers() -> None:
    """`min_score` (issue 18 follow-up): the most specific layer that sets it wins over the
    profile's `decisions.min_score`; a campaign's replaces it for that campaign's offers."""
    base = CapLimits()
    docs = {
        "all": doc("all", 4, min_score=0.2, campaigns={"c-a": {"min_score": 0.0}}),
        "profile:tv": doc("profile:tv", 4, offer_per_day=2),
        "region:x": doc("region:x", 4, min_score=0.6),
    }
    policy = merge(base, (), "tv", ["all", "profile:tv"], docs, base_min_score=0.1)
    assert policy.floor.default == 0.2  # `all` over the profile; profile:tv leaves it unset
    assert policy.floor.of("c-a") == 0.0
    assert policy.floor.of("c-b") == 0.2
    assert merge(base, (), "tv", ["all", "region:x"], docs).floor.default == 0.6
    # no document: the profile's own; none anywhere: no floor
    assert merge(base, (), "tv", ["all"], {}, base_min_score=0.1).floor.default == 0.1
    assert merge(base, (), "tv", ["all"], {}).floor.unset
    for bad in (1.5, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="min_score"):
            PolicyRules.model_validate({"min_score": bad})


def test_the_household_section_layers_field_by_field_over_the_coordinators_defaults() -> None:
    base = CapLimits()
    docs = {
        "all": doc("all", 4, household={"per_day": 6, "quiet_hours": ALWAYS_QUIET}),
        "profile:hub": doc("profile:hub", 5, household={"offer_window_s": 600}),
        "region:x": doc("region:x", 3, household={"quiet_hours": []}),
    }
    policy = merge(base, (), "hub", ["all", "profile:hub", "region:x"], docs)
    assert policy.household == HouseholdPolicy(offer_window_s=600.0, per_day=6, quiet=())
    assert policy.limits == base  # the household section leaves the device's own caps alone
    caps = caps_from(policy.household, 8 * 3600.0)
    assert caps == HouseholdCaps(offer_window_s=600.0, per_day=6, quiet=(), utc_offset_s=28800.0)
    # without `region:x`, the quiet hours of `all` hold; unset rules keep the defaults
    alone = merge(base, (), "hub", ["all"], docs).household
    assert alone.quiet == (QuietWindow(0, 12 * 60), QuietWindow(12 * 60, 0))
    assert caps_from(alone, 0.0).offer_window_s == HouseholdCaps().offer_window_s
    assert caps_from(merge(base, (), "hub", ["all"], {}).household, 0.0) == HouseholdCaps()
    # bounded on the wire, and a document carrying it verifies and round-trips
    with pytest.raises(ValueError, match="per_day"):
        PolicyRules.model_validate({"household": {"per_day": -1}})
    with pytest.raises(ValueError, match="extra"):
        PolicyRules.model_validate({"household": {"per_week": 3}})
    wire = docs["all"].to_wire()
    assert PolicyDocument.model_validate(wire).rules == docs["all"].rules
    assert "household" not in doc("all", 1).to_wire()["rules"]  # older agents see nothing new


async def test_a_signed_policy_is_enforced_offline_kept_and_reported(tmp_path: Path) -> None:
    async with running_device(tmp_path) as device:
        agent, link = device.agent, device.transports.last
        assert not link.connected.is_set()  # no broker, no gateway: everything below is local
        await agent.set_consent(CONSENT)
        await link.deliver("offers", device.bundle([("o1", 0.1, 50), ("o2", 0.2, 40)]))
        assert len((await agent.decide(SURFACE, 3)).ranked) == 2
        policy = doc("profile:tv", 2, global_per_day=1, campaigns={"c-o2": {"campaign_per_day": 0}})
        await link.deliver("cohort_policy", signed(device.signer, policy), "profile:tv")
        assert agent.counters["policies_accepted"] == 1
        decision = await agent.decide(SURFACE, 3, explain=True)
        assert [r.offer.id for r in decision.ranked] == ["o1"]  # c-o2 capped at 0 a day
        assert ("o2", "cap_campaign_day") in decision.filtered
        await agent.record_outcome("o1", "impression", SURFACE)
        decision = await agent.decide(SURFACE, 3, explain=True)
        assert decision.ranked == []  # the global cap of 1 a day is reached
        assert ("o1", "cap_global_day") in decision.filtered
        assert agent.status()["policy"] == {"version": 2, "cohorts": {"profile:tv": 2}}
        assert agent.parts.report.birth().policy_version == 2
    async with running_device(tmp_path) as device:  # restarted: the policy holds at once
        assert device.agent.parts.report.birth().policy_version == 2
        assert (await device.agent.decide(SURFACE, 3)).ranked == []


async def test_forged_foreign_and_older_policies_are_refused_and_counted(tmp_path: Path) -> None:
    async with running_device(tmp_path) as device:
        agent, link = device.agent, device.transports.last
        await link.deliver(
            "cohort_policy", signed(device.signer, doc("all", 5, global_per_day=7)), "all"
        )
        assert agent.status()["policy"]["version"] == 5
        mallory = Signer.generate("k1")  # the pinned key's id, another key
        await link.deliver("cohort_policy", signed(mallory, doc("all", 9)), "all")
        unsigned = codec.dumps(doc("all", 9).to_wire())
        await link.deliver("cohort_policy", unsigned, "all")
        tampered = device.signer.sign(doc("all", 9, global_per_day=1000).to_wire())
        tampered["rules"]["global_per_day"] = 100_000
        await link.deliver("cohort_policy", codec.dumps(tampered), "all")
        # for another cohort than the topic's, or a cohort this device is not in
        await link.deliver("cohort_policy", signed(device.signer, doc("all", 9)), "profile:tv")
        await link.deliver("cohort_policy", signed(device.signer, doc("region:x", 9)), "region:x")
        assert agent.counters["policies_rejected"] == 5
        await link.deliver("cohort_policy", signed(device.signer, doc("all", 4)), "all")
        assert agent.counters["policies_rolled_back"] == 1
        assert agent.status()["policy"]["version"] == 5
        assert agent.parts.decisions.cap_limits.global_per_day == 7


async def outbox_explanations(agent: Agent) -> list[dict[str, Any]]:
    """The attrs of the `offer_explain` signals in the agent's outbox."""
    thread = agent.store.thread

    def read() -> list[tuple[str]]:
        sql = "SELECT attrs FROM signals WHERE kind = ?"
        return list(thread.conn().execute(sql, [EXPLAIN_KIND]).fetchall())

    return [json.loads(r[0]) for r in await agent.store.call(read)]


async def test_explanations_count_each_campaign_once_per_decision(tmp_path: Path) -> None:
    async with running_device(tmp_path) as device:
        agent, link = device.agent, device.transports.last
        await agent.set_consent(CONSENT)
        await link.deliver(
            "offers", device.bundle([("o1", 0.1, 50), ("o2", 0.2, 40), ("o3", 0.2, 30)])
        )
        policy = doc(
            "all",
            1,
            campaigns={"c-o2": {"campaign_per_day": 0}, "c-o3": {"holdout": 1.0}},
        )
        await link.deliver("cohort_policy", signed(device.signer, policy), "all")
        await agent.decide(SURFACE, 3)
        await agent.decide(SURFACE, 3)
        await link.deliver(
            "cohort_policy", signed(device.signer, doc("all", 2, quiet_hours=ALWAYS_QUIET)), "all"
        )
        await agent.decide(SURFACE, 3)
        assert await agent.parts.explanations.report() == 3
        got = {a["campaign_id"]: a for a in await outbox_explanations(agent)}
        assert got["c-o1"] == {"campaign_id": "c-o1", "shown": 2, "quiet_hours": 1}
        assert got["c-o2"] == {"campaign_id": "c-o2", "cap": 2, "quiet_hours": 1}
        assert got["c-o3"] == {"campaign_id": "c-o3", "holdout": 2, "quiet_hours": 1}
        assert await agent.parts.explanations.report() == 0  # drained: nothing twice


async def test_without_analytics_consent_explanations_stay_on_the_device(tmp_path: Path) -> None:
    async with running_device(tmp_path) as device:
        agent, link = device.agent, device.transports.last
        await agent.set_consent({**CONSENT, "analytics": False, "marketing": False})
        await link.deliver("offers", device.bundle([("o1", 0.1, 50)]))
        assert (await agent.decide(SURFACE, 3, explain=True)).filtered == [
            ("o1", "no_marketing_consent")
        ]
        assert await agent.parts.explanations.report() == 0
        assert agent.counters["explanations_withheld"] == 1
        assert await outbox_explanations(agent) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_the_shipped_profiles_pace_by_default(profile: str, tmp_path: Path) -> None:
    settings = load_settings(
        profile=profile,
        device_id=f"{profile}-0001",
        broker="mqtt://127.0.0.1:9",
        data_dir=tmp_path,
        environ={},
    )
    paced = settings.profile.decisions
    assert [(q.start, q.end) for q in paced.quiet_hours] == [("22:00", "08:00")]
    assert paced.global_per_day is not None
    assert 1 <= paced.global_per_day <= 6
    assert paced.campaign_per_day is not None
    assert paced.offer_per_day is not None
    assert paced.offer_per_day <= paced.campaign_per_day <= paced.global_per_day


def test_the_tally_works_out_rank_and_carries_what_could_not_be_stored() -> None:
    tally = ExplainTally()
    first, second = ("a", "b", "c"), ("a", "c")
    tally.add(first, {"a": "shown", "b": "cap"})
    tally.add(first, {"a": "shown"})
    tally.add(second, {"c": "quiet_hours"})
    counts = tally.drain()
    assert counts == {
        "a": {"shown": 2, "rank": 1},
        "b": {"cap": 1, "rank": 1},
        "c": {"rank": 2, "quiet_hours": 1},
    }
    assert not tally
    tally.restore(counts)
    tally.add(second, {"a": "shown"})
    assert tally.drain() == {
        "a": {"shown": 3, "rank": 1},
        "b": {"cap": 1, "rank": 1},
        "c": {"quiet_hours": 1, "rank": 3},
    }


async def test_past_the_byte_budget_explanations_wait_and_keep_counting(tmp_path: Path) -> None:
    async with running_device(tmp_path) as device:
        agent, link = device.agent, device.transports.last
        await agent.set_consent(CONSENT)
        await link.deliver("offers", device.bundle([("o1", 0.1, 50)]))
        degraded = [True]
        reporter = ExplainReporter(
            agent.settings,
            agent.parts.decisions.explanations,
            store=agent.store,
            consent=agent.parts.consent,
            metrics=agent.parts.metrics,
            held=lambda: degraded[0],
            poke=lambda: None,
        )
        await agent.decide(SURFACE, 3)
        assert await reporter.report() == 0  # held: nothing into the outbox
        await agent.decide(SURFACE, 3)
        degraded[0] = False
        assert await reporter.report() == 1
        assert await outbox_explanations(agent) == [{"campaign_id": "c-o1", "shown": 2}]


async def test_only_a_key_of_the_commands_role_signs_a_policy(tmp_path: Path) -> None:
    root, offers_only = Signer.generate("root-1"), Signer.generate("k2")
    async with running_device(tmp_path, root=root) as device:
        agent, link = device.agent, device.transports.last
        now = utcnow()
        keys = KeyList(
            version=1,
            keys=[
                device.signer.public.model_copy(update={"roles": ["commands", "offers"]}),
                offers_only.public.model_copy(update={"roles": ["offers"]}),
            ],
            issued_at=now,
            expires_at=now + timedelta(days=1),
        )
        await link.deliver("keys", codec.dumps(root.sign(keys.to_wire())))
        assert agent.counters["keylists_accepted"] == 1
        await link.deliver("cohort_policy", signed(offers_only, doc("all", 3)), "all")
        assert agent.counters["policies_rejected"] == 1
        await link.deliver("cohort_policy", signed(device.signer, doc("all", 3)), "all")
        assert agent.status()["policy"]["version"] == 3
