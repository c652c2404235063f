"""Reading signed cloud messages addressed to this device, and the fields a newer gateway added
to what it sends: ignored by the agent, counted, logged once.

The device reads cloud messages tolerantly (`protocol.codec.validate_tolerant`, after the
signature is checked over the object as received), so an agent already in the field keeps
working when the contract is extended. What it ignored is counted in
`downlink_unknown_fields` (`/metrics`, `/v1/status`) and logged at INFO the first time each
message type carries it; after that only counted, so a fleet-wide extension fills no flash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from agent.runtime.metrics import Metrics
from mqttlink.logs import OnceLogger
from protocol.envelopes import ClaimResult, Command
from protocol.errors import ProtocolError
from protocol.signing import Verifier, decode_signed
from protocol.social import SocialState

log = logging.getLogger(__name__)

COUNTER = "downlink_unknown_fields"
SHOWN = 5

Addressed = TypeVar("Addressed", ClaimResult, Command, SocialState)
"""The signed messages the cloud addresses to one device (`device_id` in the payload)."""


class UnknownFields:
    """Counts the ignored fields of cloud messages; one log line per message type."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._logged = OnceLogger(log, level=logging.INFO, again=None, suffix="")
        metrics.counters.setdefault(COUNTER, 0)

    def note(self, message: str, paths: Sequence[str]) -> None:
        """`message` (an envelope name) arrived carrying the unknown fields at `paths`."""
        if not paths:
            return
        self._metrics.inc(COUNTER, len(paths))
        more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
        self._logged.log(
            message,
            "%s carries fields this agent does not know, ignored: %s%s (a newer gateway; "
            "counted in %s, not logged again)",
            message,
            ", ".join(paths[:SHOWN]),
            more,
            COUNTER,
        )


def read_addressed(
    payload: bytes,
    model: type[Addressed],
    verifier: Verifier,
    *,
    max_bytes: int,
    device_id: str,
    unknown: UnknownFields,
    refuse: Callable[[str, str], None],
) -> Addressed | None:
    """Verify the signature, validate tolerantly, note unknown fields, check the addressee;
    None (after `refuse(reason, detail)`) for anything forged, malformed or someone else's."""
    try:
        # answers to a device's own requests (claims, group buys, price cuts): `claims` role
        role = "claims" if model in (ClaimResult, SocialState) else "commands"
        message, paths = decode_signed(
            payload, model, verifier, max_compressed=max_bytes, role=role
        )
    except ProtocolError as exc:
        refuse(exc.reason, str(exc))
        return None
    unknown.note(model.__name__, paths)
    if message.device_id != device_id:
        refuse("wrong_device", f"{model.__name__} {message.id} for device {message.device_id!r}")
        return None
    return message
