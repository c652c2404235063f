"""A campaign's trends, pure: impressions, clicks and conversions per hour over the last
hours, with each hour's click and conversion rates and their 95 % Wilson intervals.

Counted as the campaign's stats count them (`campaigns.results`): a holdout device's
impressions are counterfactual (logged, not shown) and left out; its clicks and conversions
stay. Hours with nothing are listed with zeros, so a chart has no gaps that look like data.
An outcome's hour is the device's clock when it happened (`Outcome.at`), in UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloud_gateway.campaigns.model import Campaign
from cloud_gateway.campaigns.results import Rate, wilson
from protocol.assign import in_holdout

MAX_HOURS = 24 * 14
DEFAULT_HOURS = 24
Hours = Annotated[int, Field(ge=1, le=MAX_HOURS)]


class TrendHour(BaseModel):
    """One hour (UTC) of a campaign's outcomes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hour: str
    """The hour's start, RFC 3339 (`2026-12-06T13:00:00Z`)."""
    impressions: int
    clicks: int
    conversions: int
    ctr: Rate
    conversion_rate: Rate
    """Conversions per impression."""


class CampaignTrends(BaseModel):
    """`GET /v1/campaigns/{id}/trends`: the last `hours` hours, oldest first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign_id: str
    hours: int
    since: str
    """The first hour's start."""
    series: list[TrendHour]


def window_start(now: datetime, hours: int) -> datetime:
    """The start of the first hour of a window of `hours` hours ending with `now`'s hour."""
    top = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return top - timedelta(hours=hours - 1)


def campaign_trends(
    campaign: Campaign,
    rows: Iterable[tuple[str, str, str, int]],
    now: datetime,
    hours: int,
) -> CampaignTrends:
    """Fold `db.trends.trend_rows` (hour `YYYY-MM-DDTHH`, device, kind, n) into the series.

    Rows outside the window (a device clock ahead of the gateway's) are left out."""
    start = window_start(now, hours)
    keys = [(start + timedelta(hours=i)).strftime("%Y-%m-%dT%H") for i in range(hours)]
    counts = {k: {"impression": 0, "click": 0, "conversion": 0} for k in keys}
    held: dict[str, bool] = {}
    for hour, device_id, kind, n in rows:
        bucket = counts.get(hour)
        if bucket is None or kind not in bucket:
            continue
        if kind == "impression":
            if device_id not in held:
                held[device_id] = in_holdout(device_id, campaign.id, campaign.holdout)
            if held[device_id]:
                continue
        bucket[kind] += n
    series = [
        TrendHour(
            hour=f"{k}:00:00Z",
            impressions=c["impression"],
            clicks=c["click"],
            conversions=c["conversion"],
            ctr=wilson(c["click"], c["impression"]),
            conversion_rate=wilson(c["conversion"], c["impression"]),
        )
        for k, c in counts.items()
    ]
    return CampaignTrends(
        campaign_id=campaign.id,
        hours=hours,
        since=series[0].hour,
        series=series,
    )
