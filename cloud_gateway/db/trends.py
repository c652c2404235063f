"""SQL of a campaign's trends: its outcomes counted per hour, device and kind since a moment.

One statement on both backends: an outcome's `at` is RFC 3339 text (`protocol.ids.format_time`),
so its first 13 characters name its hour (`2026-12-06T13`) and text order is time order.
Per device, so the fold (`campaigns.trends`) can leave holdout devices' impressions out as the
campaign's stats do.
"""

from __future__ import annotations

from cloud_gateway.db.backend import Session

TREND_ROWS = (
    "SELECT substr(at, 1, 13) AS hour, device_id, kind, count(*) AS n FROM outcomes"
    " WHERE campaign_id = ? AND at >= ? AND kind IN ('impression', 'click', 'conversion')"
    " GROUP BY substr(at, 1, 13), device_id, kind"
)


def trend_rows(store: Session, campaign_id: str, since: str) -> list[tuple[str, str, str, int]]:
    """`(hour, device_id, kind, n)` of the campaign's outcomes at or after `since` (RFC 3339)."""
    rows = store.conn.execute(TREND_ROWS, [campaign_id, since]).fetchall()
    # by position: a row per device and hour, so no dict per row (`Session.rows`)
    return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]
