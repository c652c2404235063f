"""The store's rows about what the cloud sent and what the device learned: verified offers,
replay ids and receipts, and feature buckets. Mixed into `agent.store.core.Store`, whose
dedicated thread and transactions it uses."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")


class OfferRows:
    """Offer, replay and feature-bucket tables; `Store` provides the thread and connection."""

    seen_ids_max: int

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _conn(self) -> sqlite3.Connection: ...

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # ------------------------------------------------------------ offers and replay

    async def load_offers(self) -> list[tuple[str, str, str]]:
        """(source, bundle_id, offer JSON) of every stored verified offer."""
        return await self._run(self._load_offers)

    def _load_offers(self) -> list[tuple[str, str, str]]:
        rows = self._conn().execute("SELECT source, bundle_id, offer FROM offers ORDER BY rowid")
        return [(str(s), str(b), str(o)) for s, b, o in rows]

    async def seen(self, message_id: str) -> bool:
        return await self._run(self._seen, message_id)

    def _seen(self, message_id: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM seen_ids WHERE id = ?", (message_id,))
        return row.fetchone() is not None

    async def add_receipt(self, message_id: str) -> None:
        await self._run(self._add_receipt, message_id)

    def _add_receipt(self, message_id: str) -> None:
        with self._tx() as tx:
            tx.execute("INSERT OR IGNORE INTO receipts(id) VALUES (?)", (message_id,))

    async def apply_bundle(
        self,
        *,
        source: str,
        bundle_id: str,
        offers: Sequence[tuple[str, str]],
        replace_source: bool,
        revokes: Sequence[str],
        receipt: bool,
    ) -> None:
        """Record a verified bundle: seen id, offers (replacing the source's if asked),
        revocations and the receipt to send, in one transaction."""
        await self._run(
            self._apply_bundle,
            source,
            bundle_id,
            list(offers),
            replace_source,
            list(revokes),
            receipt,
        )

    def _apply_bundle(  # noqa: PLR0917  # private twin of apply_bundle, called via the executor
        self,
        source: str,
        bundle_id: str,
        offers: list[tuple[str, str]],
        replace_source: bool,
        revokes: list[str],
        receipt: bool,
    ) -> None:
        now = time.time()
        with self._tx() as tx:
            tx.execute("INSERT OR REPLACE INTO seen_ids(id, seen) VALUES (?, ?)", (bundle_id, now))
            if replace_source:
                tx.execute("DELETE FROM offers WHERE source = ?", (source,))
            tx.executemany(
                "INSERT OR REPLACE INTO offers(source, id, bundle_id, offer, received)"
                " VALUES (?, ?, ?, ?, ?)",
                [(source, oid, bundle_id, body, now) for oid, body in offers],
            )
            tx.executemany("DELETE FROM offers WHERE id = ?", [(r,) for r in revokes])
            if receipt:
                tx.execute("INSERT OR IGNORE INTO receipts(id) VALUES (?)", (bundle_id,))
            (count,) = tx.execute("SELECT COUNT(*) FROM seen_ids").fetchone()
            if count > self.seen_ids_max:
                tx.execute(
                    "DELETE FROM seen_ids WHERE id IN (SELECT id FROM seen_ids ORDER BY seen"
                    " LIMIT ?)",
                    (int(count) - self.seen_ids_max,),
                )

    # ------------------------------------------------------------ feature buckets

    async def load_buckets(self) -> list[tuple[str, int, int]]:
        return await self._run(self._load_buckets)

    def _load_buckets(self) -> list[tuple[str, int, int]]:
        rows = self._conn().execute("SELECT key, hour, count FROM feature_buckets")
        return [(str(k), int(h), int(c)) for k, h, c in rows]

    async def prune_buckets(self, before_hour: int) -> int:
        return await self._run(self._prune_buckets, before_hour)

    def _prune_buckets(self, before_hour: int) -> int:
        with self._tx() as tx:
            cur = tx.execute(
                "DELETE FROM feature_buckets WHERE hour < ? OR count = 0", (before_hour,)
            )
        return cur.rowcount
