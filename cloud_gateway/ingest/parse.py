"""Uplink parsing: topic + payload -> a parsed message, a counted rejection's reason, or
nothing to do. Pure: hostile bytes give a `Rejected`, never an exception.

What is accepted is also storable: every number finite and within 64 bits (`NaN` and
`1e400` are refused as `non_finite` by `codec.loads_finite`, naming the field), every time
convertible to UTC (`0001-01-01T00:00:00+14:00` is `invalid`, naming the field), no string
with a NUL (`\\u0000`, which PostgreSQL's text cannot hold: `invalid`); a lone surrogate
(`\\ud800`) is `invalid` by pydantic's own checks. A message the store could not hold would
otherwise fail its commit again at every resend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel
from pydantic_core import from_json

from protocol import codec
from protocol.envelopes import Batch, ClaimRequest, State
from protocol.errors import InvalidMessage, NonFiniteNumber, ProtocolError
from protocol.topics import Topics

MAX_SEQ = 2**53
"""A batch's `seq` at most (`protocol.envelopes.Seq`)."""
ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""An outbox id (`protocol.envelopes.Id`)."""
INT64 = (-(2**63), 2**63)
"""What SQLite's INTEGER and PostgreSQL's bigint hold: [low, high)."""
EDGE_YEARS = (1, 9999)
"""Only a time in these years can fall outside `datetime`'s range when moved to UTC."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """An uplink message that passed every check; `device_id` comes from the topic."""

    device_id: str
    message: Batch | ClaimRequest | State


@dataclass(frozen=True, slots=True)
class Rejected:
    """An uplink message refused for `reason`; `device_id` is the topic's, if it had one.

    A batch refused for good (`REFUSED_FOR_GOOD`: resending it cannot help) whose `seq` could
    be read carries it, its `outbox_id` and the offending `field`: the gateway answers it
    with a refusal in the device's ack (`Ack.refused`)."""

    reason: str
    device_id: str | None
    detail: str
    seq: int | None = None
    outbox_id: str | None = None
    field: str | None = None
    later: bool = False
    """A newer gateway may take it (a field this one does not know): never refused for good,
    so a device that sent a new field too early keeps the batch for an upgraded gateway."""


REFUSED_FOR_GOOD = frozenset({"invalid", "non_finite"})
"""Reasons a batch is refused whatever the number of deliveries (but see `later`)."""
UNKNOWN_FIELD = "Extra inputs are not permitted"
"""pydantic's words for a field the envelope does not know (`extra="forbid"`)."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do: an empty retained payload clearing a device's state topic."""

    device_id: str


def decode_valid_batch(payload: bytes, max_compressed: int, max_decompressed: int) -> Batch | None:
    """Fast path of `codec.decode(payload, Batch, allow_zlib=True)` for a valid, storable
    batch; None for anything else, which then takes the full path (so every rejection keeps
    its reason and message, and `codec.loads_finite` names a non-finite number's field).

    The same steps and bounds, minus the nesting walk (`codec._depth`, ~40 % of decoding):
    every field of a `Batch` is a scalar or a list/dict of scalars (`extra="forbid"`), so a
    payload that validates nests at most 5 levels, below `codec.MAX_DEPTH`. The JSON is read
    by pydantic-core with `allow_inf_nan=False` (`NaN` and `Infinity` fail there), as strict
    as `json.loads` everywhere else (a lone surrogate fails too) and faster; an overflowing
    number (`1e400` reads as infinity) or an integer past 64 bits in `attrs` is caught after
    validation (`_numbers_storable`), a time at the edges of the calendar by the full path.
    """
    if not payload or len(payload) > max_compressed:
        return None
    try:
        raw = payload if payload[:1] == b"{" else codec.inflate(payload, max_decompressed)
        if len(raw) > max_decompressed:
            return None
        obj = from_json(raw, allow_inf_nan=False)
        if not isinstance(obj, dict):
            return None
        version = obj.get("v")
        if version != 1 or isinstance(version, bool):
            return None
        batch = Batch.model_validate(obj)
    except (ProtocolError, ValueError, RecursionError):
        # ValueError covers pydantic-core's JSON errors and pydantic's ValidationError.
        return None
    # A time is text (`YYYY-...`) or a number (UTC, never out of range): only the text of
    # year 1 or 9999 can fail to move to UTC; a NUL in a string can only be written
    # `\\u0000` (a raw one is not JSON). These bytes are found in microseconds.
    if b'"0001-' in raw or b'"9999-' in raw or b"\\u0000" in raw:
        return None  # the full path names the field, if any (`unstorable`)
    if not _numbers_storable(batch):
        return None
    return batch


def _numbers_storable(batch: Batch) -> bool:
    """Every number the validation let through fits the store: no infinity in `attrs`
    (from an overflowing literal) and no integer past 64 bits there or in a version."""
    low, high = INT64
    for signal in batch.signals:
        for value in signal.attrs.values():
            kind = value.__class__
            if kind is float:
                if value - value != 0.0:  # type: ignore[operator]  # inf - inf is NaN
                    return False
            elif kind is int and not low <= value < high:  # type: ignore[operator]
                return False
    return unstorable_version(batch) is None


def unstorable_version(batch: Batch) -> tuple[str, str] | None:
    found = _big_int("model_version", batch.model_version)
    for i, outcome in enumerate(batch.outcomes):
        if found is not None:
            break
        found = _big_int(f"outcomes.{i}.model_version", outcome.model_version)
    return found


def unstorable(
    message: Batch | ClaimRequest | State, *, nul_possible: bool = True
) -> tuple[str, str] | None:
    """Pure: the (dotted field path, why) of the first value of a validated message that the
    store cannot hold, or None. Numbers: an infinity (from an overflowing literal) or an
    integer past 64 bits, which pydantic lets through in `attrs` and versions. Times: one
    that overflows when moved to UTC (year 1 east of UTC, year 9999 west of it). Strings:
    one with a NUL character; `nul_possible=False` (the JSON holds no `\\u0000`, the only
    way to write one) skips walking every string, which was most of a birth's cost."""
    if isinstance(message, ClaimRequest):
        if not nul_possible:
            return _edge_time("at", message.at)
        return unstorable_value(message)
    if isinstance(message, State):
        found = _big_int("model_version", message.model_version)
        if found is not None or nul_possible:
            return found or unstorable_value(message)
        report = message.model_update
        return (_edge_time("at", message.at) if message.at is not None else None) or (
            _edge_time("model_update.at", report.at)
            if report is not None and report.at is not None
            else None
        )
    found = unstorable_version(message) or _edge_time("sent_at", message.sent_at)
    if found is not None:
        return found
    low, high = INT64
    for i, signal in enumerate(message.signals):
        if bad := _edge_time(f"signals.{i}.at", signal.at):
            return bad
        for key, value in signal.attrs.items():
            if isinstance(value, float):
                if value - value != 0.0:  # an infinity (or NaN): inf - inf is NaN
                    return f"signals.{i}.attrs.{key}", f"{value} is not a finite number"
            elif isinstance(value, int) and not low <= value < high:
                return f"signals.{i}.attrs.{key}", f"{value} is past 64 bits"
    for i, outcome in enumerate(message.outcomes):
        if bad := _edge_time(f"outcomes.{i}.at", outcome.at):
            return bad
    return unstorable_value(message)  # strings with a NUL (this is the full path: rare)


def _big_int(path: str, value: int | None) -> tuple[str, str] | None:
    low, high = INT64
    if value is None or low <= value < high:
        return None
    return path, f"{value} is past 64 bits"


def unstorable_value(value: object, path: str = "") -> tuple[str, str] | None:
    """Pure: the (dotted path, why) of the first value in a validated value (a pydantic
    model, list, dict, time or string) that no store can hold, or None: an aware time that
    cannot be moved to UTC (`0001-01-01T00:00:00+14:00` validates, then fails `format_time`),
    or a string with a NUL character (`\\u0000` is valid JSON; PostgreSQL's text cannot
    hold it). The generic walk, for API bodies and the uplink's full path."""
    if isinstance(value, datetime):
        return _edge_time(path, value)
    if isinstance(value, str):
        return (path or "(root)", "a NUL character cannot be stored") if "\x00" in value else None
    items: Iterable[tuple[object, object]]
    if isinstance(value, BaseModel):
        items = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return where, "a NUL character cannot be stored"
        found = unstorable_value(item, where)
        if found is not None:
            return found
    return None


def _edge_time(path: str, moment: datetime) -> tuple[str, str] | None:
    if moment.tzinfo is None or moment.year not in EDGE_YEARS:
        return None
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return path, f"{moment.isoformat()} is out of range in UTC"
    return None


def parse_uplink(
    topics: Topics,
    topic: str,
    payload: bytes,
    *,
    max_compressed: int = codec.MAX_COMPRESSED,
    max_decompressed: int = codec.MAX_DECOMPRESSED,
) -> Parsed | Rejected | Ignored:
    """Pure: hostile bytes give a Rejected, never an exception. The topic names the device."""
    where = topics.parse_uplink(topic)
    if where is None:
        return Rejected("unknown_topic", None, f"not an uplink topic: {topic[:200]!r}")
    model: type[Batch | ClaimRequest | State]
    if where.kind == "batch":
        model = Batch
    elif where.kind == "claim":
        model = ClaimRequest
    else:
        if not payload:
            return Ignored(where.device_id)
        model = State
    message = _decode(where.kind, model, payload, max_compressed, max_decompressed)
    if isinstance(message, Rejected):
        if where.kind != "batch" or message.reason not in REFUSED_FOR_GOOD or message.later:
            return Rejected(message.reason, where.device_id, message.detail)
        seq, outbox_id = _batch_key(payload, max_compressed, max_decompressed)
        return Rejected(
            message.reason, where.device_id, message.detail, seq, outbox_id, message.field
        )
    if message.device_id != where.device_id:
        return Rejected(
            "wrong_device",
            where.device_id,
            f"payload names device {message.device_id!r} on the topic of {where.device_id!r}",
        )
    return Parsed(where.device_id, message)


def _decode(
    kind: str,
    model: type[Batch | ClaimRequest | State],
    payload: bytes,
    max_compressed: int,
    max_decompressed: int,
) -> Batch | ClaimRequest | State | Rejected:
    """The message, or why not: a `Rejected` with its reason, detail and field (the device
    is filled in by the caller). Never raises for what a peer sent."""
    try:
        message: Batch | ClaimRequest | State | None = None
        if model is Batch:
            message = decode_valid_batch(payload, max_compressed, max_decompressed)
        if message is None:
            message = codec.decode(
                payload,
                model,
                allow_zlib=kind == "batch",
                max_compressed=max_compressed,
                max_decompressed=max_decompressed,
            )
            # a NUL can only be written `\u0000` in JSON; a zlib payload is not looked into
            nul = payload[:1] != b"{" or b"\\u0000" in payload
            bad = unstorable(message, nul_possible=nul)
            if bad is not None:
                return Rejected("invalid", None, f"{bad[0]}: {bad[1]}"[:300], field=bad[0])
    except NonFiniteNumber as exc:
        return Rejected(exc.reason, None, str(exc)[:300], field=exc.path)
    except InvalidMessage as exc:
        field = exc.errors[0].get("loc") if exc.errors else None
        later = any(e.get("msg") == UNKNOWN_FIELD for e in exc.errors)
        return Rejected(exc.reason, None, str(exc)[:300], field=field, later=later)
    except ProtocolError as exc:
        return Rejected(exc.reason, None, str(exc)[:300])
    except RecursionError:
        return Rejected("malformed", None, "payload nests too deeply")
    return message


def _batch_key(
    payload: bytes, max_compressed: int, max_decompressed: int
) -> tuple[int | None, str | None]:
    """(seq, outbox_id) of a batch refused for good, when they can be read (else None, None):
    only to name it in the refusal sent back to its device, never stored. Read leniently
    (pydantic-core, `NaN` allowed): the refusal is for a payload that is not valid JSON of
    ours, `NaN` and all."""
    if len(payload) > max_compressed:
        return None, None
    try:
        raw = payload if payload[:1] == b"{" else codec.inflate(payload, max_decompressed)
        obj = from_json(raw, allow_inf_nan=True)
    except (ProtocolError, ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    seq, outbox_id = obj.get("seq"), obj.get("outbox_id")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        return None, None
    if outbox_id is not None and not (isinstance(outbox_id, str) and ID_RE.fullmatch(outbox_id)):
        return None, None
    return seq, outbox_id
