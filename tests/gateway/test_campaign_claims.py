"""Claims decide on the same audience as the push: targeting, holdout, variant and the offer's
window are checked in the claim transaction before any stock is touched (SQLite on disk, no
network)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cloud_gateway.campaigns.model import Campaign, CampaignIn, new_campaign, transition
from cloud_gateway.db.backend import Session
from cloud_gateway.db.campaigns import insert_campaign
from cloud_gateway.db.claims import claim_batch, init_stock, stock_left
from cloud_gateway.db.ingest import store_batch_detail
from protocol.assign import in_holdout, pick_variant
from protocol.envelopes import Batch, ClaimRequest, Signal
from protocol.ids import new_id, utcnow

COUPON = {
    "type": "coupon",
    "title": "-50%",
    "category": "appliances",
    "surfaces": ["tv_home_banner"],
    "limited": True,
    "stock": 100,
}


def live(store: Session, spec: dict[str, Any]) -> Campaign:
    now = utcnow()
    campaign = transition(new_campaign(CampaignIn.model_validate(spec), now), "launch", now)
    insert_campaign(store, campaign.doc())
    init_stock(store, campaign.id, [(o.id, o.stock or 0) for o in campaign.offers if o.limited])
    return campaign


def claim(store: Session, campaign: Campaign, device: str, offer: str, days: float = 0) -> str:
    def make(_d: str, _c: ClaimRequest, granted: bool, code: str | None, reason: str) -> Any:
        return {"granted": granted, "code": code, "reason": reason}

    request = ClaimRequest(
        id=new_id(), device_id=device, offer_id=offer, campaign_id=campaign.id, at=utcnow()
    )
    [answer] = claim_batch(store, [(device, request)], make, utcnow() + timedelta(days=days))
    return str(answer.result["reason"])


def test_claims_are_refused_outside_targeting_holdout_variant_and_window(
    open_store: Callable[[], Session],
) -> None:
    store = open_store()
    now = utcnow()
    for device, tier in (("tv-gold", 3), ("tv-basic", 1)):
        signal = Signal(id=new_id(), kind="member_tier", at=now, attrs={"tier": tier})
        batch = Batch(device_id=device, seq=1, sent_at=now, agent_version="0", signals=[signal])
        store_batch_detail(store, device, batch, now)
    tiers = live(
        store,
        {
            "name": "gold only",
            "cohorts": ["all"],
            "targeting": {"member_tiers": [3]},
            "offers": [{**COUPON, "id": "gold"}],
        },
    )
    assert claim(store, tiers, "tv-basic", "gold").startswith("not targeted")
    assert claim(store, tiers, "tv-unknown", "gold").startswith("not targeted")
    assert claim(store, tiers, "tv-gold", "gold") == "granted"

    held = live(store, {"name": "h", "cohorts": ["all"], "holdout": 0.5, "offers": [COUPON]})
    devices = [f"tv-{i:03d}" for i in range(40)]
    out = next(d for d in devices if in_holdout(d, held.id, 0.5))
    inside = next(d for d in devices if not in_holdout(d, held.id, 0.5))
    assert "holdout" in claim(store, held, out, held.offers[0].id)
    assert claim(store, held, inside, held.offers[0].id) == "granted"

    ab = live(
        store,
        {
            "name": "ab",
            "cohorts": ["all"],
            "variants": {"a": 1, "b": 1, "c": 0},
            "offers": [
                {**COUPON, "id": "oa", "variant": "a"},
                {**COUPON, "id": "ob", "variant": "b"},
                {**COUPON, "id": "oc", "variant": "c"},
            ],
        },
    )
    device = devices[0]
    mine = pick_variant(device, ab.id, ab.weights)
    other = "ob" if mine == "a" else "oa"
    assert "another variant" in claim(store, ab, device, other)
    assert "weight 0" in claim(store, ab, device, "oc")
    assert claim(store, ab, device, f"o{mine}") == "granted"

    later = now + timedelta(days=1)
    windowed = live(
        store,
        {
            "name": "w",
            "cohorts": ["all"],
            "offers": [
                {**COUPON, "id": "soon", "starts_at": later.isoformat()},
                {**COUPON, "id": "short", "expires_at": later.isoformat()},
            ],
        },
    )
    assert claim(store, windowed, device, "soon").startswith("not started")
    assert claim(store, windowed, device, "short", days=2).startswith("expired")
    assert stock_left(store, windowed.id) == {"soon": 100, "short": 100}  # nothing touched
    assert stock_left(store, tiers.id) == {"gold": 99}
