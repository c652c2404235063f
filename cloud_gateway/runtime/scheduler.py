"""The campaign clock: starts scheduled campaigns and ends expired ones on time, re-sends
device bundles still without a receipt, re-checks the targeting of devices with new reports,
acts on pushes any worker's change left owed; and the catalog refresh that re-signs catalogs
before devices drop them. Loops of the gateway, run by the worker holding the lease."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.errors import GatewayError

log = logging.getLogger(__name__)


async def run_scheduler(campaigns: CampaignService, tick_s: float, resend_after_s: float) -> None:
    """Every `tick_s`: due state changes; bundles unconfirmed for `resend_after_s` go again;
    push markers a change on any worker left (one killed before acting on them) are acted on."""
    while True:
        campaigns.poke()
        try:
            await campaigns.run_due()
            await campaigns.delivery.resend_due(timedelta(seconds=resend_after_s))
            await campaigns.delivery.recheck_due()
        except GatewayError as exc:
            log.warning("scheduler tick failed: %s", exc)
        await asyncio.sleep(tick_s)


async def run_catalog_refresh(
    campaigns: CampaignService, connected: asyncio.Event, period_s: float
) -> None:
    """Re-sign catalogs before devices drop them: once connected, then every `period_s`."""
    while True:
        await connected.wait()
        try:
            await campaigns.refresh_due()
        except GatewayError as exc:
            log.warning("catalog refresh failed: %s", exc)
        await asyncio.sleep(period_s)
