"""Screenshots of the dashboard's pages when asked for (`EDGEMART_DASHBOARD_SHOTS=<dir>`;
`scripts/dashboard_shots.sh` makes `docs/dashboard/*.png` so)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.async_api import Page

SHOTS = os.environ.get("EDGEMART_DASHBOARD_SHOTS")


async def shot(page: Page, name: str) -> None:
    """A screenshot of the page when asked for (`EDGEMART_DASHBOARD_SHOTS`)."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)
