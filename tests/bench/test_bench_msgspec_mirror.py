"""bench/msgspec_batch.py mirrors the contract's uplink `Batch` for one benchmark baseline: it
must accept and refuse what the pydantic models do, or that figure measures other checks."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from bench import msgspec_batch
from bench.ingest_bench import _aggregate_stream, _stream
from protocol import codec
from protocol.envelopes import Batch
from protocol.errors import ProtocolError


def _both(payload: bytes) -> tuple[Batch, msgspec_batch.Batch]:
    return codec.decode(payload, Batch, allow_zlib=True), msgspec_batch.decode(payload)


def test_both_read_the_benchmark_streams_alike() -> None:
    for _, payload in _stream(2, 2, 50) + _aggregate_stream(2, 2, 5):
        strict, fast = _both(payload)
        assert len(fast.signals) == len(strict.signals)
        assert [(s.id, s.kind, s.at, dict(s.attrs)) for s in fast.signals] == [
            (s.id, s.kind, s.at, dict(s.attrs)) for s in strict.signals
        ]
        assert [(a.window, a.key, a.count, a.seconds) for a in fast.aggregates] == [
            (a.window, a.key, a.count, a.seconds) for a in strict.aggregates
        ]
        assert (fast.device_id, fast.seq, fast.sent_at) == (
            strict.device_id,
            strict.seq,
            strict.sent_at,
        )


def _good() -> dict[str, Any]:
    return {
        "v": 1,
        "device_id": "tv-0001",
        "seq": 3,
        "sent_at": "2026-12-02T08:00:00.000Z",
        "agent_version": "0.1.0",
        "signals": [
            {
                "id": "s1",
                "kind": "content_view",
                "at": "2026-12-02T07:59:00.000Z",
                "attrs": {"category": "tv", "seconds": 3},
            }
        ],
        "aggregates": [{"window": "1h:2026-12-02T07", "key": "content_view", "count": 2}],
        "outcomes": [
            {
                "id": "o1",
                "offer_id": "f1",
                "campaign_id": "c1",
                "kind": "click",
                "at": "2026-12-02T07:59:00.000Z",
                "surface": "tv_home_banner",
                "features": [0.5, 1.0],
            }
        ],
        "receipts": ["r1"],
        "stats": {"dropped": 1},
        "outbox_id": "ob-1",
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    """The good batch with one field (dotted path, list indexes as numbers) set or added."""
    doc: dict[str, Any] = json.loads(json.dumps(_good()))
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return doc


BAD = {
    "unknown top-level field": _with("extra", 1),
    "unknown signal field": _with("signals.0.extra", 1),
    "v 2": _with("v", 2),
    "device id pattern": _with("device_id", "TV 1"),
    "negative seq": _with("seq", -1),
    "seq past 2**53": _with("seq", 2**53 + 1),
    "time without zone": _with("sent_at", "2026-12-02T08:00:00"),
    "signal id pattern": _with("signals.0.id", "a b"),
    "empty signal id": _with("signals.0.id", ""),
    "kind upper case": _with("signals.0.kind", "Content"),
    "attr key pattern": _with("signals.0.attrs", {"Bad Key": 1}),
    "attr value too long": _with("signals.0.attrs", {"k": "x" * 257}),
    "attr value a list": _with("signals.0.attrs", {"k": [1]}),
    "33 attrs": _with("signals.0.attrs", {f"k{i}": i for i in range(33)}),
    "2001 signals": _with("signals", [_good()["signals"][0]] * 2001),
    "aggregate count negative": _with("aggregates.0.count", -1),
    "aggregate key empty": _with("aggregates.0.key", ""),
    "outcome kind": _with("outcomes.0.kind", "purchase"),
    "513 features": _with("outcomes.0.features", [0.0] * 513),
    "score out of range": _with("outcomes.0.score", 1e7),
    "stats unknown": _with("stats.lost", 1),
    "receipt pattern": _with("receipts.0", "r 1"),
    "agent_version too long": _with("agent_version", "x" * 33),
}


def test_both_accept_the_hand_made_good_batch() -> None:
    _both(codec.encode_dict(_good()))
    _both(codec.encode_dict(_good(), compress=True))


@pytest.mark.parametrize("case", sorted(BAD))
def test_both_refuse(case: str) -> None:
    payload = codec.encode_dict(BAD[case])
    with pytest.raises(ProtocolError):
        codec.decode(payload, Batch, allow_zlib=True)
    with pytest.raises(msgspec.ValidationError):
        msgspec_batch.decode(payload)
