"""SQL of a live sale's figures for operators (issue 19): when each sold-out offer sold out
(its last grant, or the stock pull that emptied it)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cloud_gateway.db.backend import Session


def sold_out_at(store: Session, campaign_id: str, offers: Iterable[str]) -> dict[str, str]:
    """For each of `offers` (sold out now): the time it sold out, RFC 3339; an offer with
    neither a grant nor an emptying pull (its stock was 0 from the start) is left out."""
    wanted = set(offers)
    if not wanted:
        return {}
    out: dict[str, str] = {
        str(r["offer_id"]): str(r["at"])
        for r in store.rows(
            "SELECT offer_id, max(at) AS at FROM grants WHERE campaign_id = ? GROUP BY offer_id",
            [campaign_id],
        )
        if r["offer_id"] in wanted and r["at"] is not None
    }
    pulls = store.rows(
        "SELECT at, detail FROM audit WHERE action = 'wave.stock' AND target = ?",
        [f"campaign:{campaign_id}"],
    )
    for r in pulls:
        detail: Any = json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]
        offer = detail.get("offer_id") if isinstance(detail, dict) else None
        if offer in wanted and detail.get("stock") == 0 and str(r["at"]) > out.get(offer, ""):
            out[offer] = str(r["at"])
    return out
