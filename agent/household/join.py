"""An agent joins its household on start: when its settings name a LAN address (`lan_host`)
and its data dir holds a grant (`DATA_DIR/household/membership.json`), it advertises, elects,
coordinates or follows (`HouseholdClient`), ranks for thin devices with its model, and its
decisions ask the household's caps."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping

from agent.config import AgentSettings
from agent.household.client import HouseholdClient
from agent.household.membership import MembershipError, credentials, load_key, read_membership
from agent.household.remote_rank import model_ranker
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
) -> HouseholdClient | None:
    """The started household client, or None (no LAN address, no grant, or a grant that does
    not hold: logged and counted, the agent runs alone)."""
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
    profile = settings.profile
    client = HouseholdClient(
        creds,
        verifier,
        host=host,
        interfaces=(host,),
        personalization=personalization,
        contribution=contribution,
        ranker=model_ranker(model, profile.timezone, profile.budgets.max_candidates),
        counters=counters,
    )
    await client.start()
    return client
