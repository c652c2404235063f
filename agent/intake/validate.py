"""Validation of what apps hand the agent (signals, outcomes) and the outbox rows made of valid
signals: pure, field-level errors, bounded."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.config import Profile
from agent.errors import InvalidInput, TooLarge
from agent.intake.kinds import KindTable
from agent.store.rows import NewSignal
from protocol.codec import field_errors
from protocol.envelopes import Attrs, Id, Name, OutcomeKind
from protocol.ids import format_time, new_ids, utcnow

MAX_FUTURE = timedelta(days=1)
"""How far after the device's clock a signal's `at` may be (clocks of apps drift)."""
INT64 = 2**63
MAX_ATTRS_BYTES = 4096
"""One signal's attrs as compact UTF-8 JSON: any one signal then fits in a batch with room to
spare, whatever the gateway's bounds (`agent.link.uplink.MAX_BATCH_PAYLOAD`)."""


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
"""Compact JSON, the encoder built once (`json.dumps` with options builds one per call). Only
validated attrs go through it, a flat dict of scalars that cannot refer to itself: no check
for cycles (~20% of the encoding time)."""


def _json_size_bound(attrs: dict[str, Any]) -> int | None:
    """An upper bound of the compact UTF-8 JSON size of validated attrs (ASCII `Name` keys;
    str, int, float, bool or None values), or None when only encoding can tell (non-ASCII
    text, which may not even be valid UTF-8). An ASCII character costs at most 6 bytes (a
    `\\u00XX` escape), a number at most 32, `false`/`null` 5; plus quotes, colon, comma.
    None too for a number that cannot be stored (past 64 bits, NaN, infinite): the slow
    path (`_unstorable`) names it, so the usual case checks each value once (intake is hot)."""
    size = 2
    for key, value in attrs.items():
        size += 6 * len(key) + 4
        if isinstance(value, str):
            if not value.isascii():
                return None
            size += 6 * len(value) + 2
        elif isinstance(value, float):
            if not -math.inf < value < math.inf:  # False for NaN too
                return None
            size += 32
        elif isinstance(value, int) and not -INT64 <= value < INT64:
            return None  # a huge integer: as long as its digits, and unstorable
        else:
            size += 32
    return size


def _unstorable(value: Any) -> str | None:
    """Why an attr value cannot be stored (NaN, an infinity, an integer past 64 bits)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        return "is an integer past 64 bits"
    return None


class SignalIn(BaseModel):
    """One signal as an app sends it: `kind`, optional `at` (RFC 3339, aware), `attrs`, and
    an optional client `id` (kept as the signal's id; a signal already held is not stored
    again)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Name
    at: AwareDatetime | None = None
    attrs: Attrs = Field(default_factory=dict)
    id: Id | None = None

    @field_validator("attrs")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        bound = _json_size_bound(value)
        if bound is not None and bound <= MAX_ATTRS_BYTES:
            return value  # the usual case: provably small, not encoded twice (intake is hot)
        for key, item in value.items():
            why = _unstorable(item)  # the HTTP form never gets here (`loads_finite`)
            if why is not None:
                raise ValueError(f"{key}: {why}")
        size = len(_ENCODE(value).encode("utf-8"))
        if size > MAX_ATTRS_BYTES:
            raise ValueError(f"is {size} bytes of JSON, over the limit of {MAX_ATTRS_BYTES} bytes")
        return value

    @field_validator("at")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        """Any offset is accepted; the time must exist in UTC (years 1..9999) and be at
        most `MAX_FUTURE` after the device's clock."""
        if value is None:
            return None
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise ValueError("is outside years 1..9999 once converted to UTC") from None
        if value > utcnow() + MAX_FUTURE:
            hours = MAX_FUTURE.total_seconds() / 3600
            raise ValueError(f"is more than {hours:g} h after the device's clock (the bound)")
        return value


class SignalsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    signals: Annotated[list[SignalIn], Field(min_length=1)]


class OutcomeIn(BaseModel):
    """Body of `POST /v1/outcomes`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offer_id: Id
    kind: OutcomeKind
    surface: Name


def parse_signals(obj: object, *, max_items: int) -> list[SignalIn]:
    """`{"signals": [...]}` to validated signals; TooLarge over `max_items`, InvalidInput else.

    All or nothing: one bad item fails the whole request, with every error's field path.
    """
    if isinstance(obj, dict):
        items = obj.get("signals")
        if isinstance(items, list) and len(items) > max_items:
            raise TooLarge(
                f"{len(items)} signals is over the limit of {max_items} per request",
                limit=max_items,
            )
    try:
        return list(SignalsRequest.model_validate(obj).signals)
    except ValidationError as exc:
        raise InvalidInput(field_errors(exc)) from exc


def parse_signal_list(items: list[dict[str, Any]], *, max_items: int) -> list[SignalIn]:
    """The library form (`accept_signals([...])`), with the same paths as the HTTP form."""
    return parse_signals({"signals": items}, max_items=max_items)


def signal_rows(signals: Sequence[SignalIn], now: datetime, profile: Profile) -> list[NewSignal]:
    """The outbox rows of validated signals: a new id each, `at` (`now` when the app gave
    none) as wire text, compact attrs JSON, the kind's priority and expiry (`at` plus the
    kind's time to live). A request's signals mostly share one time and a few kinds, so the
    time's text and the expiry are worked out once per (time, kind) (intake is hot)."""
    stamps: dict[tuple[datetime | None, str], tuple[str, int, float]] = {}
    rows: list[NewSignal] = []
    for fresh_id, item in zip(new_ids(len(signals)), signals, strict=True):
        signal_id = item.id or fresh_id
        stamp = stamps.get((item.at, item.kind))  # keyed by `at` as given: None hashes fast
        if stamp is None:
            at = item.at or now
            policy = profile.policy(item.kind)
            expires = (at + timedelta(hours=policy.ttl_hours)).timestamp()
            stamp = stamps[item.at, item.kind] = (format_time(at), policy.priority, expires)
        text, priority, expires = stamp
        rows.append(NewSignal(signal_id, item.kind, text, _ENCODE(item.attrs), priority, expires))
    return rows


def check_signals(
    signals: Sequence[SignalIn], now: datetime, profile: Profile, kinds: KindTable
) -> None:
    """What only the profile can tell: each kind known (documented or declared) with its
    attributes of the right types, and `at` within the kind's time to live (a signal already
    past it would only expire unsent). InvalidInput with every error's field path."""
    errors: list[dict[str, str]] = []
    oldest: dict[str, datetime] = {}
    table = kinds.kinds
    for index, item in enumerate(signals):
        rules = table.get(item.kind)
        if rules is None or not all(
            rule is None or rule.accepts(value)
            for rule, value in ((rules.get(n), v) for n, v in item.attrs.items())
        ):  # the slow path only for a signal that is wrong: it says what and where
            errors.extend(kinds.errors(f"signals.{index}", item.kind, item.attrs))
        if item.at is None:
            continue
        bound = oldest.get(item.kind)
        if bound is None:
            bound = oldest[item.kind] = now - timedelta(hours=profile.policy(item.kind).ttl_hours)
        if item.at < bound:
            ttl = profile.policy(item.kind).ttl_hours
            errors.append(
                {
                    "loc": f"signals.{index}.at",
                    "msg": f"is older than the time to live of {item.kind!r} signals"
                    f" ({ttl:g} h): the bound is {format_time(bound)}",
                }
            )
    if errors:
        raise InvalidInput(errors)


def parse_outcome(obj: object) -> OutcomeIn:
    try:
        return OutcomeIn.model_validate(obj)
    except ValidationError as exc:
        raise InvalidInput(field_errors(exc)) from exc
