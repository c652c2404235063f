"""The operators' decision policy (issue 18): caps, quiet hours and holdout per profile,
cohort or campaign, stored, audited, signed as `PolicyDocument`s and published retained on
`cohort/{c}/policy`.

Where: one retained document per cohort (`profile:<name>` for a profile), on a topic of its
own rather than inside the cohort's offer catalog: a policy narrows what a device may do, so an
agent that does not know it must not receive it as an ignorable field of a message it does
know (docs/protocol.md, "extend, never rename"); the catalog is signed with the `offers` role
and exists only for cohorts with live campaigns; and `cohort/#` is already in every device's
broker ACL, so no ACL changes. Campaign rules ride in every document (the device takes them
from the newest it holds), and the `all` document is always published so they reach every
device. Every change takes one new version for all documents (`db.policies.next_version`).

Signed with the gateway's signing key for the `commands` role: `Role` is a closed `Literal` in
the key list that devices in the field validate, so a key carrying a new `policy` role would
make them refuse the whole key list; a policy is an instruction to the device like a `config`
command, which is what `commands` keys are trusted with.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from cloud_gateway.db.campaigns import get_campaign
from cloud_gateway.db.policies import (
    delete_policy,
    devices_by_policy_version,
    last_publication,
    list_policies,
    next_version,
    put_policy,
)
from cloud_gateway.errors import GatewayError, InvalidInput, NotFound
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.envelopes import MAX_POLICY_CAMPAIGNS, PolicyDocument, PolicyRules
from protocol.ids import new_id, parse_time, utcnow
from protocol.topics import COHORT_RE, PROFILE_RE

log = logging.getLogger(__name__)

Scope = Literal["profile", "cohort", "campaign"]
SCOPES: tuple[Scope, ...] = ("profile", "cohort", "campaign")
EVERYONE = "all"
"""The cohort every shipped profile is in: its document always goes out."""
DOCUMENT_TTL = timedelta(days=30)
CAMPAIGN_ONLY = ("offer_per_day", "campaign_per_day", "holdout", "min_score")
"""What a campaign's policy may set (surface, global caps and quiet hours are per device)."""


class Policy(BaseModel):
    """One stored policy (`GET /v1/policies`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Scope
    name: str
    rules: PolicyRules
    updated_at: str
    updated_by: str


class PolicyList(BaseModel):
    """`GET /v1/policies`: the policies, the version published last, and how many devices
    report running each version (0: none yet, the firmware profile's settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: list[Policy]
    version: int
    published_at: str | None
    cohorts: list[str]
    devices_by_version: dict[str, int]


def check_scope(scope: str, name: str, rules: PolicyRules) -> None:
    """InvalidInput naming the field unless `name` fits `scope` and `rules` fit a campaign."""
    if scope not in SCOPES:
        raise InvalidInput(
            "unknown scope",
            errors=[{"loc": "scope", "msg": f"{scope!r} is not one of {', '.join(SCOPES)}"}],
        )
    pattern = {"profile": PROFILE_RE, "cohort": COHORT_RE}.get(scope)
    if pattern is not None and not pattern.fullmatch(name):
        raise InvalidInput(
            f"invalid {scope} name",
            errors=[{"loc": "name", "msg": f"{name!r} does not match {pattern.pattern}"}],
        )
    if scope == "campaign":
        wrong = [
            f
            for f in PolicyRules.model_fields
            if f not in CAMPAIGN_ONLY and getattr(rules, f) is not None
        ]
        if wrong:
            raise InvalidInput(
                "a campaign's policy sets only per-offer and per-campaign caps, holdout, min_score",
                errors=[
                    {"loc": f, "msg": "set per profile or cohort, not per campaign"} for f in wrong
                ],
            )


def cohort_of(scope: str, name: str) -> str:
    return f"profile:{name}" if scope == "profile" else name


def documents(
    policies: list[dict[str, Any]], cohorts: set[str], version: int, issued: datetime
) -> list[PolicyDocument]:
    """The signed-to-be documents of one publication: one per cohort, each with its own
    rules (empty for a cohort whose policy was removed) and every campaign's rules."""
    rules = {
        cohort_of(p["scope"], p["name"]): PolicyRules.model_validate(p["rules"])
        for p in policies
        if p["scope"] != "campaign"
    }
    campaigns = {
        p["name"]: PolicyRules.model_validate(p["rules"])
        for p in policies
        if p["scope"] == "campaign"
    }
    return [
        PolicyDocument(
            id=new_id(),
            cohort=cohort,
            version=version,
            issued_at=issued,
            expires_at=issued + DOCUMENT_TTL,
            rules=rules.get(cohort, PolicyRules()),
            campaigns=campaigns,
        )
        for cohort in sorted(cohorts)
    ]


class PolicyService(Service):
    """Put, delete and list policies; each change publishes every cohort's document."""

    def __init__(self, wiring: Wiring) -> None:
        super().__init__(wiring)
        self.dirty = False

    async def put(self, scope: str, name: str, rules: PolicyRules, who: str) -> PolicyList:
        check_scope(scope, name, rules)
        if scope == "campaign" and await self._db.call(get_campaign, name) is None:
            raise NotFound("campaign", name)
        if scope == "campaign":
            held = await self._db.call(list_policies)
            others = {p["name"] for p in held if p["scope"] == "campaign"} - {name}
            if len(others) >= MAX_POLICY_CAMPAIGNS:
                raise InvalidInput(
                    f"at most {MAX_POLICY_CAMPAIGNS} campaigns have a policy",
                    errors=[{"loc": "name", "msg": "too many campaign policies"}],
                )
        body = rules.model_dump(mode="json", exclude_none=True)
        await self._db.call(put_policy, scope, name, body, who=who, at=utcnow())
        await self.publish()
        return await self.listing()

    async def delete(self, scope: str, name: str, who: str) -> PolicyList:
        if scope not in SCOPES or not await self._db.call(
            delete_policy, scope, name, who, utcnow()
        ):
            raise NotFound("policy", f"{scope}/{name}")
        await self.publish()
        return await self.listing()

    async def listing(self) -> PolicyList:
        policies = await self._db.call(list_policies)
        last = await self._db.call(last_publication)
        by_version = await self._db.call(devices_by_policy_version)
        return PolicyList(
            policies=[Policy.model_validate(p) for p in policies],
            version=last["version"] if last else 0,
            published_at=last["published_at"] if last else None,
            cohorts=last["cohorts"] if last else [],
            devices_by_version={str(v): n for v, n in by_version.items()},
        )

    async def publish(self) -> int:
        """Sign and publish every cohort's document under a new version (the cohorts with a
        policy, `all`, and those published before, which get theirs cleared). Returns the
        version; a failed publish leaves the service dirty (`refresh_due` retries)."""
        policies = await self._db.call(list_policies)
        last = await self._db.call(last_publication)
        cohorts = {EVERYONE} | {
            cohort_of(p["scope"], p["name"]) for p in policies if p["scope"] != "campaign"
        }
        if last is not None:
            cohorts |= set(last["cohorts"])
        now = utcnow()
        version = await self._db.call(next_version, sorted(cohorts), now)
        self.dirty = False
        for doc in documents(policies, cohorts, version, now):
            signed = self._signer.sign(doc.to_wire())
            try:
                await self._publish(
                    self._topics.cohort_policy(doc.cohort), codec.encode_dict(signed), True
                )
            except GatewayError as exc:
                self.dirty = True
                log.warning("policy of cohort %s not published (%s); will retry", doc.cohort, exc)
                continue
            self._counters["policies_published"] += 1
        log.info("policy version %d published to %d cohorts", version, len(cohorts))
        return version

    async def refresh_due(self) -> None:
        """Publish again when a publish failed or the documents are past half their life."""
        last = await self._db.call(last_publication)
        if last is None:
            return
        age = utcnow() - parse_time(last["published_at"])
        if self.dirty or age >= DOCUMENT_TTL / 2:
            await self.publish()
