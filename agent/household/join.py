"""An agent joins its household on start: when its settings name a LAN address (`lan_host`)
and its data dir holds a grant (`DATA_DIR/household/membership.json`), it advertises, elects,
coordinates or follows (`HouseholdClient`), ranks for thin devices with its model, and its
decisions ask the household's caps; a thin device ranks through it (`AgentService.use_remote`)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from agent.config import AgentSettings
from agent.decide.cloud_policy import NO_HOUSEHOLD_POLICY, HouseholdPolicy
from agent.decide.remote import RankRequest, RankResult
from agent.features.household import HouseholdContext
from agent.household.client import HouseholdClient
from agent.household.coordinator import Ranker
from agent.household.membership import MembershipError, credentials, load_key, read_membership
from agent.household.state import HouseholdCaps, caps_from
from agent.model.scoring import Model
from agent.offers.book import load_trust
from protocol.signing import Verifier

log = logging.getLogger(__name__)


async def join(
    settings: AgentSettings,
    *,
    personalization: Callable[[], bool],
    contribution: Callable[[], tuple[Mapping[str, int], int]],
    model: Callable[[], Model | None],
    counters: Counter[str],
    policy: Callable[[], HouseholdPolicy] = lambda: NO_HOUSEHOLD_POLICY,
) -> HouseholdClient | None:
    """The started household client, or None (no LAN address, no grant, or a grant that does
    not hold: logged and counted, the agent runs alone). `policy`: the cloud's household caps
    in force on this device, which it enforces while it coordinates."""
    host = settings.lan_host
    if host is None:
        return None
    grant = await asyncio.to_thread(read_membership, settings.data_dir)
    if grant is None:
        return None
    key = await asyncio.to_thread(load_key, settings.data_dir)
    trust = await asyncio.to_thread(load_trust, settings.trust)
    verifier = Verifier.from_public_keys(trust.keys)
    try:
        creds = credentials(grant, key, verifier)
    except MembershipError as exc:
        counters["household_membership_refused"] += 1
        log.warning("not joining the household: %s", exc)
        return None
    client = HouseholdClient(
        creds,
        verifier,
        host=host,
        interfaces=(host,),
        personalization=personalization,
        contribution=contribution,
        ranker=model_ranker(model) if settings.profile.ranking != "thin" else None,
        counters=counters,
        caps=policy_caps(settings, policy),
    )
    await client.start()
    return client


def policy_caps(
    settings: AgentSettings,
    policy: Callable[[], HouseholdPolicy],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Callable[[], HouseholdCaps]:
    """The coordinator's caps now: `policy()` (the cloud's household section) over the
    defaults, in this device's local time (its profile's timezone, offset taken at each call:
    a DST change moves the household's quiet hours with it)."""

    def caps() -> HouseholdCaps:
        offset = clock().astimezone(settings.tz).utcoffset()
        return caps_from(policy(), offset.total_seconds() if offset is not None else 0.0)

    return caps


def model_ranker(model: Callable[[], Model | None]) -> Ranker:
    """The coordinator's `Ranker` over this device's current model (`model()`: its slot's;
    None scores by priority): `agent.decide.remote_rank.rank_for`, imported on first use so
    that a thin device's process never loads the scoring side."""

    async def rank(request: RankRequest, household: HouseholdContext) -> RankResult:
        from agent.decide.remote_rank import rank_for  # noqa: PLC0415 - the model side only

        return rank_for(model(), request, household)

    return rank
