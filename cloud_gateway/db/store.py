"""The gateway's SQLite store: batches once, device registry, campaigns, pushes, tokens, audit.

`Store` is synchronous and owned by one thread; `Database` runs its methods in a dedicated
single-thread executor so the event loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from pydantic_core import to_json
from sqlite_utils import Database as SqliteDatabase

from cloud_gateway.db.migrations import apply_migrations, transaction
from cloud_gateway.errors import StoreError
from protocol.envelopes import Batch, ClaimRequest, State
from protocol.ids import format_time

P = ParamSpec("P")
T = TypeVar("T")

OUTCOME_KINDS = ("impression", "click", "dismiss", "conversion")


def _json(obj: Any) -> str:
    """Compact JSON text, as `json.dumps(obj, separators=(",", ":"), ensure_ascii=False)`
    writes it (NaN and infinities too), by pydantic-core: ~8x faster per signal's attrs."""
    return to_json(obj, inf_nan_mode="constants").decode()


class _TimeFormatter:
    """`format_time` memoised within one batch: a device's signals share few timestamps."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[datetime, str] = {}

    def __call__(self, moment: datetime) -> str:
        text = self._seen.get(moment)
        if text is None:
            text = self._seen[moment] = format_time(moment)
        return text


def insert_audit(
    conn: sqlite3.Connection,
    who: str,
    action: str,
    target: str,
    at: datetime,
    *,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit row, inside the caller's transaction (a change and its audit commit together)."""
    conn.execute(
        "INSERT INTO audit (who, action, target, at, detail) VALUES (?, ?, ?, ?, ?)",
        [who, action, target, format_time(at), _json(detail or {})],
    )


def insert_campaign_row(conn: sqlite3.Connection, doc: dict[str, Any]) -> None:
    """A campaign document's row, inside the caller's transaction."""
    conn.execute(
        "INSERT INTO campaigns (id, name, state, doc, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [doc["id"], doc["name"], doc["state"], _json(doc), doc["created_at"], doc["updated_at"]],
    )


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What `store_batch_detail` did: `new` is False for a batch already stored."""

    new: bool
    signals: int = 0
    aggregates: int = 0
    outcomes: int = 0


class Store:
    """One SQLite connection (WAL, synchronous=FULL), used only from the thread that made it."""

    def __init__(self, path: Path | str) -> None:
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self.db = SqliteDatabase(conn)
            self.conn = conn
            self.applied = apply_migrations(self.db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the gateway database {path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def _one(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any] | None:
        row = self.conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def _ensure_device(self, device_id: str, now: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO devices (device_id, status, first_seen, last_seen, malformed)"
            " VALUES (?, 'offline', ?, ?, 0)",
            [device_id, now, now],
        )

    # ------------------------------------------------------------ ingest

    def store_batch(self, device_id: str, batch: Batch, received_at: datetime) -> bool:
        """Store a batch exactly once per (device_id, outbox_id, seq); False if it was already
        stored."""
        return self.store_batch_detail(device_id, batch, received_at).new

    def store_batch_detail(
        self, device_id: str, batch: Batch, received_at: datetime
    ) -> StoredBatch:
        try:
            with transaction(self.conn):
                return self._insert_batch(device_id, batch, format_time(received_at))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store batch {batch.seq} of {device_id}: {exc}") from exc

    def store_batches(
        self, items: Sequence[tuple[str, Batch]], received_at: datetime
    ) -> list[StoredBatch]:
        """Group commit: store each (device_id, batch) once, all in ONE transaction (one fsync).

        All or nothing: on a StoreError nothing of the group is stored, and the caller stores
        the batches one by one so that one bad batch cannot lose the others. A (device_id, seq)
        twice in the group is stored once; the second is reported as a duplicate.
        """
        now = format_time(received_at)
        try:
            with transaction(self.conn):
                return [self._insert_batch(device_id, batch, now) for device_id, batch in items]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store a group of {len(items)} batches: {exc}") from exc

    def _insert_batch(self, device_id: str, batch: Batch, now: str) -> StoredBatch:
        """The rows of one batch, inside the caller's transaction."""
        outbox = batch.outbox_id or ""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO batches (device_id, outbox_id, seq, received_at, sent_at,"
            " signals, aggregates, outcomes, receipts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                device_id,
                outbox,
                batch.seq,
                now,
                format_time(batch.sent_at),
                len(batch.signals),
                len(batch.aggregates),
                len(batch.outcomes),
                _json(batch.receipts),
            ],
        )
        if cur.rowcount == 0:
            self._ensure_device(device_id, now)
            self.conn.execute(
                "UPDATE devices SET last_seen = ? WHERE device_id = ?", [now, device_id]
            )
            return StoredBatch(new=False)
        times = _TimeFormatter()
        seq = batch.seq
        signals = aggregates = outcomes = 0
        if batch.signals:
            signals = self.conn.executemany(
                "INSERT OR IGNORE INTO signals (device_id, id, seq, kind, at, attrs)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (device_id, s.id, seq, s.kind, times(s.at), _json(s.attrs) if s.attrs else "{}")
                    for s in batch.signals
                ],
            ).rowcount
        if batch.aggregates:
            aggregates = self._store_aggregates(device_id, batch)
        if batch.outcomes:
            outcomes = self._store_outcomes(device_id, batch, times)
        # One upsert registers a new device or updates a known one. The newest batch's stats
        # win over a late older one; a batch of another outbox (the device's data was wiped,
        # its seq restarted) starts the count again.
        self.conn.execute(
            "INSERT INTO devices (device_id, status, first_seen, last_seen, malformed,"
            " agent_version, model_version, stats, last_seq, outbox_id)"
            " VALUES (:device, 'offline', :now, :now, 0, :agent, :model, :stats, :seq, :outbox)"
            " ON CONFLICT (device_id) DO UPDATE SET last_seen = :now, agent_version = :agent,"
            " model_version = coalesce(:model, model_version),"
            " stats = CASE WHEN outbox_id != :outbox OR :seq >= coalesce(last_seq, -1)"
            " THEN :stats ELSE stats END,"
            " last_seq = CASE WHEN outbox_id != :outbox THEN :seq"
            " ELSE max(coalesce(last_seq, -1), :seq) END,"
            " outbox_id = :outbox",
            {
                "now": now,
                "agent": batch.agent_version,
                "model": batch.model_version,
                "outbox": outbox,
                "seq": seq,
                "stats": _json(batch.stats.model_dump()),
                "device": device_id,
            },
        )
        return StoredBatch(True, max(signals, 0), max(aggregates, 0), max(outcomes, 0))

    def _store_outcomes(self, device_id: str, batch: Batch, times: _TimeFormatter) -> int:
        seq = batch.seq
        stored = self.conn.executemany(
            "INSERT OR IGNORE INTO outcomes (device_id, id, seq, offer_id, campaign_id,"
            " variant, kind, at, surface, score, model_version, counterfactual)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    device_id,
                    o.id,
                    seq,
                    o.offer_id,
                    o.campaign_id,
                    o.variant,
                    o.kind,
                    times(o.at),
                    o.surface,
                    o.score,
                    o.model_version if o.model_version is not None else batch.model_version,
                    int(o.counterfactual),
                )
                for o in batch.outcomes
            ],
        ).rowcount
        self.conn.executemany(  # issue 5: the features each decision used, for training
            "INSERT OR IGNORE INTO outcome_features (device_id, id, features) VALUES (?, ?, ?)",
            [
                (device_id, o.id, _json(o.features))
                for o in batch.outcomes
                if o.features is not None
            ],
        )
        return stored

    def _store_aggregates(self, device_id: str, batch: Batch) -> int:
        """Cumulative snapshots: per (outbox, window, key) the one from the highest seq wins,
        so a late redelivery of an older batch never lowers a count. Each outbox of a device
        counts its own signals, so their snapshots add up. Returns the rows written."""
        outbox, seq = batch.outbox_id or "", batch.seq
        written: int = self.conn.executemany(
            "INSERT INTO aggregates (device_id, outbox_id, seq, window, key, count, seconds)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, outbox_id, window, key)"
            " DO UPDATE SET seq = excluded.seq, count = excluded.count,"
            " seconds = excluded.seconds WHERE excluded.seq > aggregates.seq",
            [
                (device_id, outbox, seq, a.window, a.key, a.count, a.seconds)
                for a in batch.aggregates
            ],
        ).rowcount
        return written

    def aggregate_coverage(self, device_id: str) -> int:
        """How many signals the device's latest aggregates cover (loss accounting)."""
        row = self.conn.execute(
            "SELECT coalesce(sum(count), 0) FROM aggregates WHERE device_id = ?", [device_id]
        ).fetchone()
        return int(row[0])

    def record_state(self, device_id: str, state: State, received_at: datetime) -> None:
        now = format_time(received_at)
        try:
            with transaction(self.conn):
                self._ensure_device(device_id, now)
                self.conn.execute(
                    "UPDATE devices SET status = ?, last_seen = ?,"
                    " profile = coalesce(?, profile), agent_version = coalesce(?, agent_version),"
                    " model_version = coalesce(?, model_version), cohorts = coalesce(?, cohorts)"
                    " WHERE device_id = ?",
                    [
                        state.status,
                        now,
                        state.profile,
                        state.agent_version,
                        state.model_version,
                        _json(state.cohorts) if state.cohorts else None,
                        device_id,
                    ],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the state of {device_id}: {exc}") from exc

    def record_rejection(self, device_id: str, received_at: datetime) -> None:
        """Count one refused message against the device whose topic it came on."""
        now = format_time(received_at)
        try:
            with transaction(self.conn):
                self._ensure_device(device_id, now)
                self.conn.execute(
                    "UPDATE devices SET malformed = malformed + 1 WHERE device_id = ?", [device_id]
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot count a rejection for {device_id}: {exc}") from exc

    def store_claim(
        self, device_id: str, claim: ClaimRequest, received_at: datetime
    ) -> tuple[bool, dict[str, Any] | None]:
        """Store a claim once; returns (new, stored result of an earlier delivery or None)."""
        now = format_time(received_at)
        try:
            with transaction(self.conn):
                self._ensure_device(device_id, now)
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO claims (device_id, id, offer_id, campaign_id, at,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        device_id,
                        claim.id,
                        claim.offer_id,
                        claim.campaign_id,
                        format_time(claim.at),
                        now,
                    ],
                )
                if cur.rowcount:
                    return True, None
                row = self._one(
                    "SELECT result FROM claims WHERE device_id = ? AND id = ?",
                    [device_id, claim.id],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store claim {claim.id} of {device_id}: {exc}") from exc
        result = row["result"] if row else None
        return False, (json.loads(result) if result else None)

    def save_claim_result(self, device_id: str, claim_id: str, result: dict[str, Any]) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE claims SET result = ? WHERE device_id = ? AND id = ?",
                [_json(result), device_id, claim_id],
            )

    # ------------------------------------------------------------ device registry

    def list_devices(self) -> list[dict[str, Any]]:
        return [
            self._device_view(r) for r in self._rows("SELECT * FROM devices ORDER BY device_id")
        ]

    def get_device(self, device_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM devices WHERE device_id = ?", [device_id])
        if row is None:
            return None
        view = self._device_view(row)
        for table, key in (("batches", "batches"), ("signals", "signals_stored")):
            count = self._one(f"SELECT count(*) AS n FROM {table} WHERE device_id = ?", [device_id])  # noqa: S608 - fixed table names
            view[key] = count["n"] if count else 0
        count = self._one("SELECT count(*) AS n FROM outcomes WHERE device_id = ?", [device_id])
        view["outcomes_stored"] = count["n"] if count else 0
        view["aggregates_cover"] = self.aggregate_coverage(device_id)
        return view

    @staticmethod
    def _device_view(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "device_id": row["device_id"],
            "status": row["status"],
            "profile": row["profile"],
            "first_seen": row["first_seen"],
            "last_seen": row["last_seen"],
            "agent_version": row["agent_version"],
            "model_version": row["model_version"],
            "last_seq": row["last_seq"],
            "cohorts": json.loads(row["cohorts"]) if row["cohorts"] else [],
            "stats": json.loads(row["stats"]) if row["stats"] else {},
            "malformed": row["malformed"],
        }

    def export_device(self, device_id: str) -> dict[str, Any] | None:
        """Everything the gateway holds for a device (right of access); None when unknown."""
        registry = self.get_device(device_id)
        if registry is None:
            return None
        signals = [
            {**r, "attrs": json.loads(r["attrs"])}
            for r in self._rows(
                "SELECT id, seq, kind, at, attrs FROM signals WHERE device_id = ? ORDER BY id",
                [device_id],
            )
        ]
        aggregates = self._rows(
            "SELECT seq, window, key, count, seconds FROM aggregates WHERE device_id = ?"
            " ORDER BY seq, window, key",
            [device_id],
        )
        outcomes = self._rows(
            "SELECT id, seq, offer_id, campaign_id, variant, kind, at, surface, score,"
            " model_version FROM outcomes WHERE device_id = ? ORDER BY id",
            [device_id],
        )
        features = [
            {"id": r["id"], "features": json.loads(r["features"])}
            for r in self._rows(
                "SELECT id, features FROM outcome_features WHERE device_id = ? ORDER BY id",
                [device_id],
            )
        ]
        claims = [
            {**r, "result": json.loads(r["result"]) if r["result"] else None}
            for r in self._rows(
                "SELECT id, offer_id, campaign_id, at, received_at, granted, result FROM claims"
                " WHERE device_id = ? ORDER BY id",
                [device_id],
            )
        ]
        grants = self._rows(
            "SELECT campaign_id, offer_id, claim_id, code, at FROM grants WHERE device_id = ?"
            " ORDER BY at, claim_id",
            [device_id],
        )
        pushes = self._rows(
            "SELECT bundle_id, campaign_id, variant, holdout, kind, offers, created_at,"
            " expires_at, sent_at, sends, receipt_at FROM device_pushes WHERE device_id = ?"
            " ORDER BY created_at, bundle_id",
            [device_id],
        )
        return {
            "device_id": device_id,
            "registry": registry,
            "signals": signals,
            "aggregates": aggregates,
            "outcomes": outcomes,
            "outcome_features": features,
            "claims": claims,
            "grants": grants,
            "device_pushes": pushes,
        }

    # ------------------------------------------------------------ campaigns and pushes

    def insert_campaign(self, doc: dict[str, Any]) -> None:
        with transaction(self.conn):
            insert_campaign_row(self.conn, doc)

    def get_campaign(self, campaign_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT doc FROM campaigns WHERE id = ?", [campaign_id])
        return json.loads(row["doc"]) if row else None

    def list_campaigns(self, state: str | None = None) -> list[dict[str, Any]]:
        if state is None:
            rows = self._rows("SELECT doc FROM campaigns ORDER BY created_at, id")
        else:
            rows = self._rows(
                "SELECT doc FROM campaigns WHERE state = ? ORDER BY created_at, id", [state]
            )
        return [json.loads(r["doc"]) for r in rows]

    def update_campaign(self, doc: dict[str, Any]) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE campaigns SET state = ?, doc = ?, updated_at = ? WHERE id = ?",
                [doc["state"], _json(doc), doc["updated_at"], doc["id"]],
            )

    def record_catalog(
        self,
        cohort: str,
        bundle_id: str,
        per_campaign: dict[str, int],
        published_at: datetime,
        expires_at: datetime,
    ) -> None:
        """One published cohort catalog: a push row per campaign in it, the cohort's latest."""
        at = format_time(published_at)
        with transaction(self.conn):
            self.conn.executemany(
                "INSERT INTO pushes (campaign_id, cohort, bundle_id, offers, at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(cid, cohort, bundle_id, n, at) for cid, n in per_campaign.items()],
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO catalogs (cohort, bundle_id, offers, published_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                [cohort, bundle_id, sum(per_campaign.values()), at, format_time(expires_at)],
            )

    def catalogs(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM catalogs ORDER BY cohort")

    def campaign_counts(self, campaign_id: str) -> dict[str, int]:
        """Offers pushed, publishes, and stored outcomes by kind for one campaign."""
        pushed = self._one(
            "SELECT coalesce(sum(offers), 0) AS offers, count(*) AS n FROM pushes"
            " WHERE campaign_id = ?",
            [campaign_id],
        )
        counts = {k: 0 for k in OUTCOME_KINDS}
        for row in self._rows(
            "SELECT kind, count(*) AS n FROM outcomes WHERE campaign_id = ? GROUP BY kind",
            [campaign_id],
        ):
            counts[row["kind"]] = row["n"]
        counts["pushed"] = pushed["offers"] if pushed else 0
        counts["publishes"] = pushed["n"] if pushed else 0
        return counts

    # ------------------------------------------------------------ tokens and audit

    def add_token(self, token_id: str, token_hash: str, created_at: datetime) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO tokens (id, hash, created_at) VALUES (?, ?, ?)",
                [token_id, token_hash, format_time(created_at)],
            )

    def token_id_for_hash(self, token_hash: str) -> str | None:
        row = self._one("SELECT id FROM tokens WHERE hash = ? AND revoked_at IS NULL", [token_hash])
        return str(row["id"]) if row else None

    def audit(
        self, who: str, action: str, target: str, at: datetime, detail: dict[str, Any] | None = None
    ) -> None:
        with transaction(self.conn):
            insert_audit(self.conn, who, action, target, at, detail=detail)

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM audit ORDER BY id DESC LIMIT ?", [limit])


class Database:
    """Runs `Store` methods in one dedicated thread: `await db.call(Store.get_device, id)`."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
        self._store: Store | None = None

    async def open(self) -> Database:
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, Store, self.path)
        return self

    async def call(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        store = self._store
        if store is None:
            raise StoreError("the gateway database is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: method(store, *args, **kwargs))

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)
