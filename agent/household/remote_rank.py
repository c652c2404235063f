"""Ranking for a thin device (issue 17, item 5): what the coordinator's `POST /lan/v1/rank`
runs. The thin device sends its candidate offers (as the gateway signed them into its bundle:
it checked them itself); the coordinator scores them with its own model, without personal
features (the thin device's signals stay on the thin device), and answers scores only. The
thin device shows, counts and reports outcomes through its own outbox.

Contract: request `{"surface", "limit" (1..20), "offers": [Offer wire, <= 500], "profile"}`,
answer `{"ranked": [{"offer_id", "score", "reasons"}], "model_version": int | null,
"filtered": [[offer_id, reason]]}`; 400 for a malformed body or offer, 501 when the
coordinator has no ranker, 401/409 as every household call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from agent.decide.ranking import Consent, decide
from agent.features.context import user_context
from agent.household.coordinator import Ranker
from agent.model.scoring import Model
from protocol.envelopes import Offer
from protocol.ids import utcnow

NON_PERSONAL = Consent(analytics=False, personalization=False, marketing=True)


def model_ranker(model: Callable[[], Model | None], tz: str, max_candidates: int) -> Ranker:
    """A `Ranker` over the coordinator's current model (`model()`: its slot's, or None for
    priority order)."""

    async def rank(device_id: str, request: dict[str, Any]) -> dict[str, Any]:
        try:
            offers = [Offer.model_validate(o) for o in request["offers"]]
        except ValidationError as exc:
            raise web.HTTPBadRequest(text=f"offers: {exc.errors()[:3]}") from exc
        now = utcnow()
        ctx = user_context(now, str(request["profile"]), tz, None)
        decision = decide(
            model(),
            offers,
            ctx,
            str(request["surface"]),
            int(request["limit"]),
            now,
            NON_PERSONAL,
            max_candidates=max_candidates,
        )
        return {
            "ranked": [
                {"offer_id": r.offer.id, "score": r.score, "reasons": list(r.reasons)}
                for r in decision.ranked
            ],
            "model_version": decision.model_version,
            "filtered": [list(f) for f in decision.filtered[:100]],
            "device_id": device_id,
        }

    return rank
