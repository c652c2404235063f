"""Campaign writes that commit together with what they owe: audit rows and pending pushes.

Crash consistency: a state change (launch, pause, end) and a sell-out each commit, with what
they change, a marker naming the pushes they owe: rebuild these cohort catalogs (and
revoke these offers), push a device campaign, revoke it, refresh its holders. The service
acts on the markers after the commit and deletes each once done; at start-up it acts on
those a crash left, so a committed change is never left unannounced (the pushes themselves
are idempotent: a catalog is rebuilt from the current state, device bundles supersede).
The markers' SQL: `cloud_gateway.db.campaigns` (`create_campaign`, `change_campaign`, `pending`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PendingKind = Literal["catalog", "device_launch", "device_revoke", "device_refresh"]


@dataclass(frozen=True, slots=True)
class Owed:
    """One push a change owes; `cohorts` and `revokes` matter for `catalog` only."""

    kind: PendingKind
    campaign_id: str
    cohorts: tuple[str, ...] = ()
    revokes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored marker: `id` to delete it once its push is done."""

    id: int
    owed: Owed
