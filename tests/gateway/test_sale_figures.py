"""When a live sale's offer sold out (issue 19 item 5, the dashboard's "sold out at"), on both
backends: its last grant, or the stock pull that emptied it, whichever came later; an offer
never granted nor pulled to zero has no time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Session
from cloud_gateway.db.sale_figures import sold_out_at

T = "2026-12-06T20:00:0{}.000Z"


def _grant(store: Session, offer: str, device: str, second: int) -> None:
    store.conn.execute(
        "INSERT INTO grants (campaign_id, offer_id, device_id, claim_id, code, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        ["c1", offer, device, f"k-{device}", "CODE", T.format(second)],
    )


def test_sold_out_at_is_the_last_grant_or_the_emptying_pull(
    open_store: Callable[[], Session],
) -> None:
    store = open_store()
    with store.transaction():
        _grant(store, "a", "tv-1", 1)
        _grant(store, "a", "tv-2", 3)  # a's last coupon
        _grant(store, "b", "tv-1", 2)
        _grant(store, "x", "tv-1", 4)  # another campaign's offer of the same id: not counted
        store.conn.execute("UPDATE grants SET campaign_id = 'c2' WHERE offer_id = 'x'")
        # b: 4 left after its grant were pulled at :05; a: 2 added at :04 (not emptying)
        pulled = datetime(2026, 12, 6, 20, 0, 5, tzinfo=UTC)
        insert_audit(store, "op", "wave.stock", "campaign:c1", pulled,
                     detail={"offer_id": "b", "delta": -4, "stock": 0})  # fmt: skip
        added = datetime(2026, 12, 6, 20, 0, 4, tzinfo=UTC)
        insert_audit(store, "op", "wave.stock", "campaign:c1", added,
                     detail={"offer_id": "a", "delta": 2, "stock": 2})  # fmt: skip
    got = sold_out_at(store, "c1", ["a", "b", "x", "never"])
    assert got == {"a": T.format(3), "b": T.format(5)}
    assert sold_out_at(store, "c1", []) == {}
    assert sold_out_at(store, "c1", ["b"]) == {"b": T.format(5)}
