"""Loss accounting: what devices accepted vs what the gateway stored, signal by signal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


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
