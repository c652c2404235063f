"""bench/capacity_bench.py builds device-days the way each profile's uplink would send them:
the figures per device-day are only as true as the traffic they are measured on."""

from __future__ import annotations

from collections import defaultdict

from bench.capacity_bench import device_days
from protocol import codec
from protocol.envelopes import Batch, State

NOW = 1_780_000_000.0


def _batches(profile: str) -> tuple[list[State], list[Batch], int]:
    days = device_days(profile, 40, NOW)
    births = [codec.decode(p, State) for _t, p in days.births]
    return births, [codec.decode(p, Batch, allow_zlib=True) for _t, p in days.batches], days.signals


def test_a_raw_profile_sends_every_signal_once_in_per_device_sequence() -> None:
    births, batches, signals = _batches("tv")
    assert len(births) == 40
    assert {b.device_id for b in births} >= {b.device_id for b in batches}
    assert sum(len(b.signals) for b in batches) == signals
    assert not any(b.aggregates for b in batches)
    assert 4 * 40 < signals < 20 * 40  # the world's ~9.5 a day on a TV
    seqs: dict[str, list[int]] = defaultdict(list)
    for batch in batches:
        seqs[batch.device_id].append(batch.seq)
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
    span = max(b.sent_at for b in batches) - min(b.sent_at for b in batches)
    assert span.total_seconds() > 20 * 3600  # spread over the day


def test_an_aggregate_profile_sends_cumulative_snapshots_covering_every_signal() -> None:
    _births, batches, signals = _batches("phone")
    assert not any(b.signals for b in batches)
    latest: dict[tuple[str, str, str], int] = {}
    for batch in batches:
        for agg in batch.aggregates:
            row = (batch.device_id, agg.window, agg.key)
            assert agg.count > latest.get(row, 0)  # a snapshot only grows
            latest[row] = agg.count
    assert sum(latest.values()) == signals
