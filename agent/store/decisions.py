"""The store's decision rows (issue 4): outcomes with logged features, daily cap counters,
exposures for attribution, and claims (one per offer). Mixed into `agent.store.core.Store`,
whose dedicated thread and transactions it uses."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from agent.errors import StoreError
from agent.store import outbox

if TYPE_CHECKING:
    from agent.store.core import NewOutcome

T = TypeVar("T")


class DecisionRows:
    """Decision tables of the on-device store; `Store` provides the thread and connection."""

    outcome_rows: int
    outbox_bytes: int
    analytics_withdrawn: bool
    drops: dict[str, int]
    clock: Callable[[], float]
    """The store's wall clock (`Store.clock`): exposures are stamped with it, as attribution
    windows are measured with the decisions' clock (the same in production; tests travel)."""

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _conn(self) -> sqlite3.Connection: ...

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

    async def record_decision_outcome(
        self,
        outcome: NewOutcome,
        *,
        features: Sequence[float] | None,
        counterfactual: bool,
        cap_rows: Sequence[tuple[str, str, int]],
        exposure: bool,
    ) -> None:
        """One transaction: the outcome (with features), its cap counters and, for impressions
        and clicks, the exposure a later conversion is attributed to."""
        await self._run(
            self._record_decision_outcome,
            outcome,
            None if features is None else json.dumps(list(features)),
            counterfactual,
            list(cap_rows),
            exposure,
        )

    def _record_decision_outcome(  # private twin, called via the executor
        self,
        o: NewOutcome,
        features: str | None,
        counterfactual: bool,
        cap_rows: list[tuple[str, str, int]],
        exposure: bool,
    ) -> None:
        size = o.size + (len(features) if features else 0)
        now = self.clock()
        # Accepted after analytics was withdrawn: the outcome never enters the outbox (it would
        # leave once consent returns), nor is it an exposure a later conversion reports; the
        # caps still count on the device.
        withdrawn = self.analytics_withdrawn
        try:
            with self._tx() as tx:
                if withdrawn:
                    outbox.meta_add(tx, "outcomes_withdrawn", 1)
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
                            features,
                            int(counterfactual),
                        ),
                    )
                tx.executemany(
                    "INSERT INTO issue4_cap_counts(scope, key, day, count) VALUES (?, ?, ?, 1)"
                    " ON CONFLICT(scope, key, day) DO UPDATE SET count = count + 1",
                    cap_rows,
                )
                if exposure and not withdrawn:
                    tx.execute(
                        "INSERT INTO issue4_exposures(outcome_id, campaign_id, offer_id, variant,"
                        " kind, at, surface, score, model_version, features, counterfactual)"
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
                            features,
                            int(counterfactual),
                        ),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store outcome: {exc}") from exc
        if withdrawn:
            self.drops["outcomes_withdrawn"] = self.drops.get("outcomes_withdrawn", 0) + 1
            return
        self.outcome_rows += 1
        self.outbox_bytes += size

    async def load_cap_counts(self, day: int) -> list[tuple[str, str, int, int]]:
        """`(scope, key, day, count)` cap counters of `day`."""
        return await self._run(self._load_cap_counts, day)

    def _load_cap_counts(self, day: int) -> list[tuple[str, str, int, int]]:
        rows = self._conn().execute(
            "SELECT scope, key, day, count FROM issue4_cap_counts WHERE day = ?", (day,)
        )
        return [(str(s), str(k), int(d), int(c)) for s, k, d, c in rows]

    async def latest_exposure(
        self, campaign_id: str, kind: str, since: float
    ) -> dict[str, Any] | None:
        """The newest exposure (`impression` or `click`) of a campaign at or after `since`."""
        return await self._run(self._latest_exposure, campaign_id, kind, since)

    def _latest_exposure(self, campaign_id: str, kind: str, since: float) -> dict[str, Any] | None:
        cols = (
            "outcome_id, campaign_id, offer_id, variant, kind, at, surface, score,"
            " model_version, features, counterfactual"
        )
        row = (
            self._conn()
            .execute(
                f"SELECT {cols} FROM issue4_exposures WHERE campaign_id = ? AND kind = ?"  # noqa: S608
                " AND at >= ? ORDER BY at DESC, rowid DESC LIMIT 1",
                (campaign_id, kind, since),
            )
            .fetchone()
        )
        if row is None:
            return None
        return dict(zip(cols.replace(" ", "").split(","), row, strict=True))

    async def prune_decisions(self, before_day: int, before: float) -> None:
        """Forget cap counters of days before `before_day` and exposures older than `before`."""
        await self._run(self._prune_decisions, before_day, before)

    def _prune_decisions(self, before_day: int, before: float) -> None:
        with self._tx() as tx:
            tx.execute("DELETE FROM issue4_cap_counts WHERE day < ?", (before_day,))
            tx.execute("DELETE FROM issue4_exposures WHERE at < ?", (before,))

    # claims: one row per offer (UNIQUE), created before anything is sent

    async def open_claim(
        self, claim_id: str, offer_id: str, campaign_id: str
    ) -> tuple[dict[str, Any], bool]:
        """The claim of `offer_id`: created as `pending` with `claim_id` if there is none yet
        (True), otherwise the existing one (False). One claim per offer, whatever happens."""
        return await self._run(self._open_claim, claim_id, offer_id, campaign_id)

    def _open_claim(
        self, claim_id: str, offer_id: str, campaign_id: str
    ) -> tuple[dict[str, Any], bool]:
        now = time.time()
        with self._tx() as tx:
            cur = tx.execute(
                "INSERT OR IGNORE INTO issue4_claims(id, offer_id, campaign_id, state, created,"
                " updated) VALUES (?, ?, ?, 'pending', ?, ?)",
                (claim_id, offer_id, campaign_id, now, now),
            )
            created = cur.rowcount == 1
            row = self._claim_row(tx, "offer_id", offer_id)
        if row is None:  # pragma: no cover - the row was just written in this transaction
            raise StoreError(f"claim of {offer_id} vanished")
        return row, created

    _CLAIM_COLS = "id, offer_id, campaign_id, state, created, updated, attempts, code, reason"

    def _claim_row(self, db: sqlite3.Connection, column: str, value: str) -> dict[str, Any] | None:
        row = db.execute(
            f"SELECT {self._CLAIM_COLS} FROM issue4_claims WHERE {column} = ?",  # noqa: S608
            (value,),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(self._CLAIM_COLS.replace(" ", "").split(","), row, strict=True))

    async def get_claim(self, claim_id: str) -> dict[str, Any] | None:
        return await self._run(lambda: self._claim_row(self._conn(), "id", claim_id))

    async def claims(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every claim (or those in `state`), oldest first."""
        return await self._run(self._claims, state)

    def _claims(self, state: str | None) -> list[dict[str, Any]]:
        names = self._CLAIM_COLS.replace(" ", "").split(",")
        sql = f"SELECT {self._CLAIM_COLS} FROM issue4_claims"  # noqa: S608
        args: tuple[str, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (state,)
        rows = self._conn().execute(sql + " ORDER BY created, id", args)
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def claim_sent(self, claim_id: str) -> None:
        await self._run(self._claim_sent, claim_id)

    def _claim_sent(self, claim_id: str) -> None:
        with self._tx() as tx:
            tx.execute(
                "UPDATE issue4_claims SET attempts = attempts + 1, updated = ? WHERE id = ?",
                (time.time(), claim_id),
            )

    async def answer_claim(  # one claim result's fields
        self, claim_id: str, *, granted: bool, code: str | None, reason: str, result_id: str
    ) -> bool:
        """Record a verified result of a pending claim, and the receipt that confirms it, in one
        transaction; False when the claim is unknown or already answered (the receipt is kept
        either way: the gateway re-sends until it sees one)."""
        return await self._run(self._answer_claim, claim_id, granted, code, reason, result_id)

    def _answer_claim(  # private twin of answer_claim
        self, claim_id: str, granted: bool, code: str | None, reason: str, result_id: str
    ) -> bool:
        with self._tx() as tx:
            cur = tx.execute(
                "UPDATE issue4_claims SET state = ?, code = ?, reason = ?, result_id = ?,"
                " updated = ? WHERE id = ? AND state = 'pending'",
                (
                    "granted" if granted else "refused",
                    code,
                    reason,
                    result_id,
                    time.time(),
                    claim_id,
                ),
            )
            tx.execute("INSERT OR IGNORE INTO receipts(id) VALUES (?)", (result_id,))
        return cur.rowcount == 1
