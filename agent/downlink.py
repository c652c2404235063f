"""Fields a newer gateway added to what it sends: ignored by the agent, counted, logged once.

The device reads cloud messages tolerantly (`protocol.codec.validate_tolerant`, after the
signature is checked over the object as received), so an agent already in the field keeps
working when the contract is extended. What it ignored is counted in
`downlink_unknown_fields` (`/metrics`, `/v1/status`) and logged at INFO the first time each
message type carries it; after that only counted, so a fleet-wide extension fills no flash.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agent.metrics import Metrics

log = logging.getLogger(__name__)

COUNTER = "downlink_unknown_fields"
SHOWN = 5


class UnknownFields:
    """Counts the ignored fields of cloud messages; one log line per message type."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._logged: set[str] = set()  # message type names: a fixed, small set
        metrics.counters.setdefault(COUNTER, 0)

    def note(self, message: str, paths: Sequence[str]) -> None:
        """`message` (an envelope name) arrived carrying the unknown fields at `paths`."""
        if not paths:
            return
        self._metrics.inc(COUNTER, len(paths))
        if message in self._logged:
            return
        self._logged.add(message)
        more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
        log.info(
            "%s carries fields this agent does not know, ignored: %s%s (a newer gateway; "
            "counted in %s, not logged again)",
            message,
            ", ".join(paths[:SHOWN]),
            more,
            COUNTER,
        )
