"""The decision log: outcomes with their logged features, daily cap counters, and exposures
a later conversion is attributed to. Synchronous; runs on the store thread."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from agent.errors import StoreError
from agent.store import idempotency, outbox_sql
from agent.store.quarantine import Poisoned
from agent.store.rows import Counters, NewOutcome
from agent.store.thread import StoreThread
from protocol.codec import loads_finite
from protocol.errors import ProtocolError

_EXPOSURE_COLS = (
    "outcome_id, campaign_id, offer_id, variant, kind, at, surface, score,"
    " model_version, features, counterfactual"
)


def add_outcome_extras(
    tx: sqlite3.Connection, outcomes: list[dict[str, Any]], poisoned: list[Poisoned]
) -> None:
    """Add the logged features and the counterfactual flag to outcomes cut into a batch; an
    outcome whose features are not finite JSON leaves `outcomes` for `poisoned`."""
    for outcome in list(outcomes):
        row = tx.execute(
            "SELECT features, counterfactual FROM outcomes WHERE id = ?", (outcome["id"],)
        ).fetchone()
        if row is None:
            continue
        if row[0]:
            try:
                outcome["features"] = loads_finite(row[0])
            except (ValueError, ProtocolError) as exc:
                poisoned.append(Poisoned("outcomes", outcome["id"], f"features: {exc}"))
                outcomes.remove(outcome)
                continue
        if row[1]:
            outcome["counterfactual"] = True


class DecisionLog:
    """Outcomes, cap counters and exposures; keeps `counters` as it commits."""

    def __init__(self, thread: StoreThread, counters: Counters, clock: Callable[[], float]) -> None:
        self._thread = thread
        self._counters = counters
        self._clock = clock
        """The store's wall clock: exposures are stamped with it, as attribution windows are
        measured with the decisions' clock (the same in production; tests travel)."""

    def record_outcome(
        self,
        o: NewOutcome,
        *,
        features: Sequence[float] | None = None,
        counterfactual: bool = False,
        cap_rows: Sequence[tuple[str, str, int]] = (),
        exposure: bool = False,
    ) -> None:
        """One transaction: the outcome (with features), its cap counters and, for impressions
        and clicks, the exposure a later conversion is attributed to. The one outcome insert.

        Accepted after analytics was withdrawn: the outcome never enters the outbox (it would
        leave once consent returns), nor is it an exposure a later conversion reports; the
        caps still count on the device."""
        self._thread.space.refuse_if_full()  # new data waits while the disk is full
        logged = None if features is None else json.dumps(list(features))
        size = o.size + (len(logged) if logged else 0)
        now = self._clock()
        c = self._counters
        withdrawn = c.analytics_withdrawn
        try:
            with self._thread.tx() as tx:
                if withdrawn:
                    outbox_sql.meta_add(tx, "outcomes_withdrawn", 1)
                else:
                    tx.execute(
                        "INSERT INTO outcomes(id, offer_id, campaign_id, variant, kind, at,"
                        " surface, score, model_version, created, size, features,"
                        " counterfactual)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            o.id,
                            o.offer_id,
                            o.campaign_id,
                            o.variant,
                            o.kind,
                            o.at,
                            o.surface,
                            o.score,
                            o.model_version,
                            now,
                            size,
                            logged,
                            int(counterfactual),
                        ),
                    )
                idempotency.record(tx, now)
                tx.executemany(
                    "INSERT INTO cap_counts(scope, key, day, count) VALUES (?, ?, ?, 1)"
                    " ON CONFLICT(scope, key, day) DO UPDATE SET count = count + 1",
                    list(cap_rows),
                )
                if exposure and not withdrawn:
                    tx.execute(
                        f"INSERT INTO exposures({_EXPOSURE_COLS})"  # noqa: S608 - fixed names
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            o.id,
                            o.campaign_id,
                            o.offer_id,
                            o.variant,
                            o.kind,
                            now,
                            o.surface,
                            o.score,
                            o.model_version,
                            logged,
                            int(counterfactual),
                        ),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store outcome: {exc}") from exc
        if withdrawn:
            c.drop("outcomes_withdrawn", 1)
            return
        c.outcome_rows += 1
        c.outbox_bytes += size

    def cap_counts(self, day: int) -> list[tuple[str, str, int, int]]:
        """`(scope, key, day, count)` cap counters of `day`."""
        rows = self._thread.conn().execute(
            "SELECT scope, key, day, count FROM cap_counts WHERE day = ?", (day,)
        )
        return [(str(s), str(k), int(d), int(c)) for s, k, d, c in rows]

    def latest_exposure(self, campaign_id: str, kind: str, since: float) -> dict[str, Any] | None:
        """The newest exposure (`impression` or `click`) of a campaign at or after `since`."""
        row = (
            self._thread.conn()
            .execute(
                f"SELECT {_EXPOSURE_COLS} FROM exposures WHERE campaign_id = ?"  # noqa: S608
                " AND kind = ? AND at >= ? ORDER BY at DESC, rowid DESC LIMIT 1",
                (campaign_id, kind, since),
            )
            .fetchone()
        )
        if row is None:
            return None
        return dict(zip(_EXPOSURE_COLS.replace(" ", "").split(","), row, strict=True))

    def prune(self, before_day: int, before: float) -> None:
        """Forget cap counters of days before `before_day` and exposures older than `before`."""
        with self._thread.tx() as tx:
            tx.execute("DELETE FROM cap_counts WHERE day < ?", (before_day,))
            tx.execute("DELETE FROM exposures WHERE at < ?", (before,))
