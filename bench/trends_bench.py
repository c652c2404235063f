"""The dashboard's campaign page on SQLite: a campaign's 24-hour trends (`db.trends.trend_rows`
folded by `campaigns.trends.campaign_trends`) for 1,000 devices, each reporting 10
impressions, a click and (every third hour) a conversion per hour, 10 % of them held out.

`campaign_trends_24h_ms`: the trends answer, median of repeats, beside the campaign's stats
(`db.campaigns.campaign_rows` folded by `campaigns.results.campaign_results`), which the same
page loads, on the same rows (the baseline). Per device and hour because the holdout is a
hash of the device id (`protocol.assign.in_holdout`), as in the stats: not computable in SQL.
The dashboard reads the trends once a minute and the stats every 5 s. An index on
`outcomes (campaign_id, at, kind, device_id)` made the query about 1.4x faster for a
campaign a week old (24 h of 7 days read) in a trial, not worth another index on the table
every batch writes to.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from bench.record import Record
from cloud_gateway.campaigns.model import CampaignIn, new_campaign
from cloud_gateway.campaigns.results import campaign_results
from cloud_gateway.campaigns.trends import campaign_trends, window_start
from cloud_gateway.db.campaigns import campaign_rows
from cloud_gateway.db.open import open_session
from cloud_gateway.db.trends import trend_rows
from protocol.ids import format_time, utcnow

DEVICES = 1000
HOURS = 24
IMPRESSIONS = 10
REPEATS = 7


def _median_ms(work: Callable[[], object]) -> float:
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run() -> list[Record]:
    now = utcnow()
    spec = CampaignIn.model_validate(
        {
            "name": "bench",
            "cohorts": ["all"],
            "holdout": 0.1,
            "offers": [
                {
                    "id": "o-1",
                    "type": "coupon",
                    "title": "bench",
                    "category": "tv_streaming",
                    "surfaces": ["tv_home_banner"],
                }
            ],
        }
    )
    campaign = new_campaign(spec, now)
    start = window_start(now, HOURS)
    rows = []
    for d in range(DEVICES):
        device = f"tv-{d:05d}"
        for h in range(HOURS):
            at = format_time(start + timedelta(hours=h, minutes=d % 60))
            kinds = (
                ["impression"] * IMPRESSIONS + ["click"] + (["conversion"] if h % 3 == 0 else [])
            )
            rows += [
                (device, f"{d}-{h}-{i}", campaign.id, "o-1", "a", kind, at, "tv_home_banner")
                for i, kind in enumerate(kinds)
            ]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_session(Path(tmp))
        try:
            with store.transaction():
                store.conn.executemany(
                    "INSERT INTO outcomes (device_id, id, campaign_id, offer_id, variant, kind,"
                    " at, surface) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            since = format_time(start)

            def trends() -> object:
                return campaign_trends(campaign, trend_rows(store, campaign.id, since), now, HOURS)

            def stats() -> object:
                return campaign_results(campaign, campaign_rows(store, campaign.id))

            shown = campaign_trends(campaign, trend_rows(store, campaign.id, since), now, HOURS)
            assert sum(h.clicks for h in shown.series) == DEVICES * HOURS  # counted, not lost
            trends_ms, stats_ms = _median_ms(trends), _median_ms(stats)
        finally:
            store.close()
    return [
        Record(
            "campaign_trends_24h_ms",
            trends_ms,
            "ms",
            f"the campaign's stats on the same {len(rows):,} outcomes (the page loads both)",
            stats_ms,
            note=f"{DEVICES} devices x {HOURS} h, SQLite, median of {REPEATS}",
        )
    ]
