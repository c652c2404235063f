"""Every social action's decision, and the batch that decides them (the desk's one call)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cloud_gateway.db import social as sql
from cloud_gateway.db import social_cuts as cuts
from cloud_gateway.db import social_groups as groups
from cloud_gateway.db.backend import Session
from cloud_gateway.db.social import Decide, MakeState, Push, SocialAnswer
from protocol.social import SocialRequest

DECIDERS: dict[str, Decide] = {
    "group_start": groups.start_group,
    "group_join": groups.join_group,
    "cut_start": cuts.start_cut,
    "cut_help": cuts.help_cut,
}


def social_batch(
    store: Session,
    requests: Sequence[tuple[str, SocialRequest]],
    make: MakeState,
    now: datetime,
) -> tuple[list[SocialAnswer], list[Push]]:
    """Decide requests in one transaction (`db.social.social_batch` with every decider)."""
    return sql.social_batch(store, requests, make, now, DECIDERS)
