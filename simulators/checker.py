"""Loss accounting: what devices accepted vs what the gateway stored, signal by signal."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LossReport:
    """Counts over all devices: every accepted signal should be stored exactly once."""

    accepted: int
    stored: int
    lost: int
    duplicated: int
    unexpected: int
    lost_ids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0


def check(
    accepted: Mapping[str, Iterable[str]], stored: Mapping[str, Iterable[str]], keep: int = 20
) -> LossReport:
    """Compare per-device id lists. `stored` may list an id twice (a gateway that stored a
    redelivery twice): that counts as duplicated. Ids stored but never accepted by the
    device count as unexpected."""
    n_acc = n_sto = lost = dup = unexpected = 0
    lost_ids: list[str] = []
    for device in set(accepted) | set(stored):
        acc = set(accepted.get(device, ()))
        counts = Counter(stored.get(device, ()))
        n_acc += len(acc)
        n_sto += sum(1 for i in counts if i in acc)
        dup += sum(c - 1 for c in counts.values() if c > 1)
        missing = acc - counts.keys()
        lost += len(missing)
        lost_ids.extend(f"{device}/{i}" for i in sorted(missing)[: max(0, keep - len(lost_ids))])
        unexpected += sum(1 for i in counts if i not in acc)
    return LossReport(n_acc, n_sto, lost, dup, unexpected, tuple(lost_ids))


@dataclass(frozen=True, slots=True)
class Drops:
    """Signals a device dropped on purpose, as its persisted counters report them
    (`GET /v1/status` -> `accounting`, or the `stats` of its latest batch)."""

    evicted: int = 0
    expired: int = 0
    withdrawn: int = 0

    @property
    def total(self) -> int:
        return self.evicted + self.expired + self.withdrawn

    @staticmethod
    def held(status: Mapping[str, Any]) -> int:
        """Signals the device still holds, not yet acked: rows in its outbox (waiting or in
        a batch in flight) and those counted in aggregates the gateway has not confirmed."""
        acc = status.get("accounting") or {}
        return int(acc.get("signals_held", 0)) + int(acc.get("aggregate_unacked", 0))

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Drops:
        acc = status.get("accounting") or status.get("stats") or {}
        return cls(
            int(acc.get("evicted", 0)), int(acc.get("expired", 0)), int(acc.get("withdrawn", 0))
        )


@dataclass(frozen=True, slots=True)
class AccountReport:
    """Every accepted signal ends stored (raw, or covered by an aggregate), or counted as
    evicted, expired or withdrawn, or is still held by its device (`undelivered`: a device
    that did not drain in time still has it, and sends it when it can). `lost` is what none
    of these explain; `overcounted` is what they explain twice (a double count is a bug too)."""

    accepted: int
    stored: int
    aggregated: int
    evicted: int
    expired: int
    withdrawn: int
    lost: int
    overcounted: int
    duplicated: int
    unexpected: int
    undelivered: int = 0
    undelivered_by_device: tuple[tuple[str, int], ...] = ()
    """(device, signals it still holds) for every device that holds some, most first."""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.overcounted == 0 and self.duplicated == 0

    def counts(self) -> dict[str, int]:
        """The totals by name (what `simulators.fleet_merge` sums over shards)."""
        return {
            "accepted": self.accepted,
            "stored": self.stored,
            "aggregated": self.aggregated,
            "evicted": self.evicted,
            "expired": self.expired,
            "withdrawn": self.withdrawn,
            "lost": self.lost,
            "overcounted": self.overcounted,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
            "undelivered": self.undelivered,
            "undelivered_devices": len(self.undelivered_by_device),
        }

    def line(self) -> str:
        return (
            f"accepted {self.accepted}: stored {self.stored}, in aggregates {self.aggregated},"
            f" evicted {self.evicted}, expired {self.expired}, withdrawn {self.withdrawn},"
            f" undelivered {self.undelivered} (still on {len(self.undelivered_by_device)}"
            " devices);"
            f" lost {self.lost}, overcounted {self.overcounted},"
            f" duplicated {self.duplicated}, unexpected {self.unexpected}"
        )


def account(
    accepted: Mapping[str, Iterable[str]],
    stored: Mapping[str, Iterable[str]],
    drops: Mapping[str, Drops],
    aggregated: Mapping[str, int] | None = None,
    held: Mapping[str, int] | None = None,
) -> AccountReport:
    """Loss accounting in raw and aggregate mode alike, device by device.

    `accepted`: ids the devices answered 202 for; `stored`: signal ids the gateway holds;
    `drops`: each device's persisted drop counters; `aggregated`: how many signals each
    device's latest aggregates at the gateway cover (`GET /v1/devices/{id}` ->
    `aggregates_cover`, or the sum of `count` in its export); `held`: how many signals each
    device still holds unacked (`Drops.held` of its status): what is missing up to that
    many is undelivered, not lost.
    """
    aggregated = aggregated or {}
    held = held or {}
    undelivered: dict[str, int] = {}
    ids = check(accepted, stored)
    totals = Counter[str]()
    lost = over = 0
    for device in set(accepted) | set(stored) | set(drops) | set(aggregated):
        acc = set(accepted.get(device, ()))
        got = set(stored.get(device, ())) & acc
        cover = int(aggregated.get(device, 0))
        d = drops.get(device, Drops())
        gap = len(acc) - len(got) - cover - d.total
        waiting = min(max(gap, 0), int(held.get(device, 0)))
        if waiting:
            undelivered[device] = waiting
            gap -= waiting
        lost += max(gap, 0)
        over += max(-gap, 0)
        totals.update(
            {
                "accepted": len(acc),
                "stored": len(got),
                "aggregated": cover,
                "evicted": d.evicted,
                "expired": d.expired,
                "withdrawn": d.withdrawn,
            }
        )
    return AccountReport(
        totals["accepted"],
        totals["stored"],
        totals["aggregated"],
        totals["evicted"],
        totals["expired"],
        totals["withdrawn"],
        lost,
        over,
        ids.duplicated,
        ids.unexpected,
        sum(undelivered.values()),
        tuple(sorted(undelivered.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def coverage(export: Mapping[str, Any]) -> int:
    """Signals covered by the aggregates of one device's gateway export."""
    return sum(int(a.get("count", 0)) for a in export.get("aggregates", ()))


def device_digest(devices: Iterable[str]) -> str:
    """An order-free fingerprint of a set of device ids: the XOR of their SHA-256s (hex), so
    the digests of disjoint shards XOR to the digest of the whole fleet."""
    return f"{digest_xor(hashlib.sha256(d.encode()).hexdigest() for d in set(devices)):064x}"


def digest_xor(digests: Iterable[str]) -> int:
    value = 0
    for digest in digests:
        value ^= int(digest, 16)
    return value
