"""SQL of the explanations devices report (issue 18): per campaign and device, how many
decisions ended in each outcome, added to inside the batch's own transaction (a batch is
stored once, so each report is counted exactly once), read back for a campaign's stats."""

from __future__ import annotations

from collections.abc import Iterable

from cloud_gateway.db.backend import Session
from protocol.envelopes import Signal
from protocol.vocabulary import EXPLAIN_KIND, EXPLAIN_OUTCOMES

_OUTCOMES = frozenset(EXPLAIN_OUTCOMES)
MAX_COUNT = 2**31
ADD = (
    "INSERT INTO campaign_explanations (campaign_id, device_id, outcome, count)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (campaign_id, device_id, outcome)"
    " DO UPDATE SET count = campaign_explanations.count + excluded.count"
)


def explanation_rows(device_id: str, signals: Iterable[Signal]) -> list[tuple[str, str, str, int]]:
    """`(campaign_id, device_id, outcome, count)` of the batch's `offer_explain` signals;
    outcomes this gateway does not know and counts that are not whole numbers are skipped
    (a newer agent's stage shows once the gateway knows it)."""
    rows: list[tuple[str, str, str, int]] = []
    for signal in signals:
        if signal.kind != EXPLAIN_KIND:
            continue
        campaign = signal.attrs.get("campaign_id")
        if not isinstance(campaign, str) or not campaign:
            continue
        for outcome, count in signal.attrs.items():
            if (
                outcome in _OUTCOMES
                and isinstance(count, int)
                and not isinstance(count, bool)
                and 0 < count < MAX_COUNT
            ):
                rows.append((campaign, device_id, outcome, count))
    return rows


def add_explanations(store: Session, rows: list[tuple[str, str, str, int]]) -> int:
    """Add the rows' counts, inside the caller's transaction; returns the rows given."""
    if rows:
        store.conn.executemany(ADD, rows)
    return len(rows)


def explanation_counts(store: Session, campaign_id: str) -> list[tuple[str, str, int]]:
    """`(device_id, outcome, count)` of one campaign."""
    rows = store.conn.execute(
        "SELECT device_id, outcome, count FROM campaign_explanations WHERE campaign_id = ?"
        " ORDER BY device_id, outcome",
        [campaign_id],
    ).fetchall()
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]
