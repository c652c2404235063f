"""Sortable unique ids (UUIDv7, RFC 9562) and RFC 3339 UTC time helpers."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime


def new_id(now_ms: int | None = None) -> str:
    """Return a UUIDv7 string: 48-bit millisecond timestamp, then random bits; sorts by time."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return str(uuid.UUID(int=value))


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a `Z`, the one form we put on the wire."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: times on the wire must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no offset: RFC 3339 needs one")
    return moment.astimezone(UTC)
