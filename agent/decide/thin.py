"""What a thin device asks the household's coordinator: `rank_request` builds the request of
one decision from the held offers (the port and the wire forms: `agent.decide.remote`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agent.decide.ranking import eligibility
from agent.decide.remote import MAX_REMOTE_OFFERS, RankRequest
from protocol.envelopes import Offer

__all__ = ["rank_request"]


def rank_request(
    offers: Sequence[Offer],
    *,
    device_id: str,
    profile: str,
    surface: str,
    now: datetime,
    local_hour: float,
    local_weekday: int,
    personalized: bool,
    refused: frozenset[str] = frozenset(),
    max_offers: int = MAX_REMOTE_OFFERS,
) -> RankRequest | None:
    """What a thin device asks: the `offers` showable on `surface` at `now` (not refused,
    the highest priorities first up to `max_offers`); None when there is none."""
    candidates, _ = eligibility(offers, surface, now)
    kept = [o for o in candidates if o.id not in refused]
    if not kept:
        return None
    kept.sort(key=lambda o: (-o.priority, o.id))
    return RankRequest(
        device_id=device_id,
        profile=profile,
        surface=surface,
        local_hour=local_hour,
        local_weekday=local_weekday,
        personalized=personalized,
        offers=tuple(kept[: min(max_offers, MAX_REMOTE_OFFERS)]),
    )
