"""Ranking through another device: the `RemoteRanker` port a thin device (no onnxruntime) asks,
the request and result it exchanges, and `rank_for`, what the ranking side computes.

A thin device sends the offers it may show on a surface now (its own eligibility, caps and
claims already applied), with its profile, local time and whether it may be personalized; the
household's coordinator scores them with its model and the household's context and answers
one score per offer. `None` from the port (no coordinator, timeout, refused) means: rank by
priority, locally. Pure except for the `Model` it is handed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.envelopes import Finite, Id, Name, Offer, OfferType

__all__ = [
    "MAX_REMOTE_OFFERS",
    "REMOTE_TIMEOUT_S",
    "RankOffer",
    "RankRequest",
    "RankResult",
    "RemoteRankError",
    "RemoteRanker",
    "parse_request",
    "parse_result",
]

MAX_REMOTE_OFFERS = 500
"""Offers one request may carry (the largest `max_candidates` of a shipped profile)."""
REMOTE_TIMEOUT_S = 0.5
"""How long a thin device waits for the coordinator's scores before ranking by priority."""


class RankOffer(BaseModel):
    """What the coordinator needs of one candidate to score it (the scoring fields of `Offer`;
    surfaces, times, caps and claims stay with the thin device, which applies them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    campaign_id: Id
    type: OfferType
    category: Name
    price: Annotated[Finite, Field(ge=0, le=1e9)] = 0.0
    discount: Annotated[Finite, Field(ge=0, le=1)] = 0.0
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    limited: bool = False


_SCORED_FIELDS = tuple(RankOffer.model_fields)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_FAR = datetime(2100, 1, 1, tzinfo=UTC)


def _scored(offer: Offer) -> dict[str, Any]:
    return {name: getattr(offer, name) for name in _SCORED_FIELDS}


def _template(surface: str) -> Offer:
    """A neutral offer for `surface` (always valid, no caps: the thin device applies its own)."""
    return Offer(
        id="x",
        campaign_id="x",
        type="coupon",
        title="",
        category="x",
        surfaces=[surface],
        starts_at=_EPOCH,
        expires_at=_FAR,
    )


def _as_offer(item: RankOffer, template: Offer) -> Offer:
    """An `Offer` for the coordinator's catalog: the checked scoring fields over `template`
    (a shallow copy: ~50 times cheaper than validating or constructing a whole offer)."""
    return template.model_copy(update=dict(item))


class RemoteRankError(ValueError):
    """A rank request or result from a peer that does not parse; says what and where."""


@dataclass(frozen=True, slots=True)
class RankRequest:
    """What a thin device asks the coordinator to score."""

    device_id: str
    profile: str
    surface: str
    local_hour: float
    local_weekday: int
    personalized: bool
    """The thin device's personalization consent: False, and no personal or household
    feature is used for it (spec defaults)."""
    offers: tuple[Offer, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "profile": self.profile,
            "surface": self.surface,
            "local_hour": self.local_hour,
            "local_weekday": self.local_weekday,
            "personalized": self.personalized,
            "offers": [_scored(o) for o in self.offers],
        }


@dataclass(frozen=True, slots=True)
class RankResult:
    """The coordinator's answer: a score per offer id and the model version that gave them."""

    scores: Mapping[str, float]
    model_version: int | None

    def to_wire(self) -> dict[str, Any]:
        return {"scores": dict(self.scores), "model_version": self.model_version}


class RemoteRanker(Protocol):
    """The port a thin device ranks through (the household client implements it over the LAN).
    Returns None when it cannot rank now: the device then ranks by priority."""

    async def rank(self, request: RankRequest) -> RankResult | None: ...


def parse_request(body: Any) -> RankRequest:
    """A `RankRequest` from its JSON form; `RemoteRankError` names the bad field."""
    if not isinstance(body, dict):
        raise RemoteRankError("rank request: body must be a JSON object")
    offers = body.get("offers")
    if not isinstance(offers, list) or len(offers) > MAX_REMOTE_OFFERS:
        raise RemoteRankError(f"rank request: offers must be a list of <= {MAX_REMOTE_OFFERS}")
    try:
        surface = str(body["surface"])[:64]
        template = _template(surface)
        parsed = tuple(_as_offer(RankOffer.model_validate(o), template) for o in offers)
        hour = float(body["local_hour"])
        weekday = int(body["local_weekday"])
        request = RankRequest(
            device_id=str(body["device_id"])[:128],
            profile=str(body["profile"])[:32],
            surface=surface,
            local_hour=hour,
            local_weekday=weekday,
            personalized=body["personalized"] is True,
            offers=parsed,
        )
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise RemoteRankError(f"rank request: {exc}") from exc
    if not (0.0 <= hour < 24.0 and 0 <= weekday <= 6):
        raise RemoteRankError("rank request: local_hour or local_weekday out of range")
    return request


def parse_result(body: Any, asked: Sequence[Offer]) -> RankResult:
    """A `RankResult` from its JSON form, keeping only finite scores of offers `asked` about."""
    if not isinstance(body, dict) or not isinstance(body.get("scores"), dict):
        raise RemoteRankError("rank result: scores must be a JSON object")
    version = body.get("model_version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise RemoteRankError("rank result: model_version must be an integer or null")
    raw: dict[str, Any] = body["scores"]
    scores: dict[str, float] = {}
    for offer in asked:
        value = raw.get(offer.id)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            scores[offer.id] = float(value)
    return RankResult(MappingProxyType(scores), version)
