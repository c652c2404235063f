"""The uplink `Batch` with the contract's bounds, as msgspec Structs: a benchmark baseline only.

`gateway_ingest_msgspec_subscriber` asks whether the gateway's ratio target is out of reach
because of pydantic or for any validating consumer in Python: msgspec is the fastest
validating JSON decoder for Python (C, one pass from bytes to typed objects). This mirror is
not the contract (protocol/envelopes.py is); tests/test_bench_msgspec_mirror.py checks that it
accepts and refuses what the pydantic models do on the benchmark's stream and on hand-made
bad batches, so the figure measures the same checks.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from protocol import codec
from protocol.envelopes import (
    MAX_AGGREGATES_PER_BATCH,
    MAX_ATTRS,
    MAX_OUTCOMES_PER_BATCH,
    MAX_RECEIPTS_PER_BATCH,
    MAX_SIGNALS_PER_BATCH,
)
from protocol.topics import DEVICE_ID_RE

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9_.:-]+$")]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
AttrValue = Annotated[str, msgspec.Meta(max_length=256)] | int | float | bool | None


class Signal(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: Id
    kind: Name
    at: UtcTime
    attrs: Annotated[dict[Name, AttrValue], msgspec.Meta(max_length=MAX_ATTRS)] = {}


class Aggregate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    window: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    count: Count
    seconds: Annotated[float, msgspec.Meta(ge=0, le=1e9)] = 0.0


class Outcome(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: Id
    offer_id: Id
    campaign_id: Id
    kind: Literal["impression", "click", "dismiss", "conversion"]
    at: UtcTime
    surface: Name
    variant: Annotated[str, msgspec.Meta(max_length=32)] = "a"
    score: Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)] | None = None
    model_version: Annotated[int, msgspec.Meta(ge=0)] | None = None
    features: Annotated[list[float], msgspec.Meta(max_length=512)] | None = None
    counterfactual: bool = False


class BatchStats(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    dropped: Count = 0
    evicted: Count = 0
    outbox_depth: Count = 0
    expired: Count = 0
    withdrawn: Count = 0
    refused: Count = 0


class Batch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    device_id: Annotated[str, msgspec.Meta(pattern=DEVICE_ID_RE.pattern)]
    seq: Count
    sent_at: UtcTime
    agent_version: Annotated[str, msgspec.Meta(max_length=32)]
    v: Literal[1] = 1
    model_version: Annotated[int, msgspec.Meta(ge=0)] | None = None
    signals: Annotated[list[Signal], msgspec.Meta(max_length=MAX_SIGNALS_PER_BATCH)] = []
    aggregates: Annotated[list[Aggregate], msgspec.Meta(max_length=MAX_AGGREGATES_PER_BATCH)] = []
    outcomes: Annotated[list[Outcome], msgspec.Meta(max_length=MAX_OUTCOMES_PER_BATCH)] = []
    receipts: Annotated[list[Id], msgspec.Meta(max_length=MAX_RECEIPTS_PER_BATCH)] = []
    stats: BatchStats = BatchStats()
    outbox_id: Id | None = None


_DECODER = msgspec.json.Decoder(Batch)


def decode(payload: bytes) -> Batch:
    """Bounded inflate (the codec's), then one msgspec pass; msgspec.ValidationError or a
    ProtocolError when the batch is not one the contract accepts."""
    if payload[:1] != b"{":
        payload = codec.inflate(payload)
    elif len(payload) > codec.MAX_DECOMPRESSED:
        raise msgspec.ValidationError("payload too large")
    batch = _DECODER.decode(payload)
    for outcome in batch.outcomes:  # the contract's Finite: JSON has no NaN, but be exact
        if outcome.features and not all(math.isfinite(f) for f in outcome.features):
            raise msgspec.ValidationError("features must be finite")
    return batch
