"""The tables of what the cloud sent and what the device learned: verified offers, replay ids
and receipts (`OfferRows`), and the feature windows' hourly buckets (`FeatureBuckets`).
Synchronous; runs on the store thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.store import outbox_sql
from agent.store.thread import StoreThread

ISSUED = "catalog_issued:"
"""Meta key prefix of the `issued_at` of the catalog a cohort source holds (issue 14)."""
TRUST = "trust:"
"""Meta key prefix of the trust taken from key lists and timestamps (issue 14)."""


class OfferRows:
    """Offers, replay ids and receipts."""

    def __init__(
        self, thread: StoreThread, clock: Callable[[], float], *, seen_ids_max: int = 10_000
    ) -> None:
        self._thread = thread
        self._clock = clock
        self.seen_ids_max = seen_ids_max

    def load(self) -> list[tuple[str, str, str]]:
        """(source, bundle_id, offer JSON) of every stored verified offer."""
        rows = self._thread.conn().execute(
            "SELECT source, bundle_id, offer FROM offers ORDER BY rowid"
        )
        return [(str(s), str(b), str(o)) for s, b, o in rows]

    def catalog_marks(self) -> dict[str, str]:
        """`{source: issued_at}` of the cohort catalogs applied: a catalog issued before its
        source's mark is an old one replayed, and refused."""
        rows = self._thread.conn().execute(
            "SELECT key, value FROM meta WHERE key LIKE ?", (ISSUED + "%",)
        )
        return {str(k)[len(ISSUED) :]: str(v) for k, v in rows}

    def drop_signed_by(self, kids: Sequence[str]) -> list[tuple[str, str]]:
        """Delete the held offers whose bundle a key in `kids` signed; (source, id) of each."""
        if not kids:
            return []
        marks = ",".join("?" * len(kids))
        with self._thread.tx() as tx:
            rows = tx.execute(
                f"SELECT source, id FROM offers WHERE kid IN ({marks})",  # noqa: S608 - marks only
                list(kids),
            ).fetchall()
            tx.execute(f"DELETE FROM offers WHERE kid IN ({marks})", list(kids))  # noqa: S608
        return [(str(s), str(i)) for s, i in rows]

    def trust_load(self) -> dict[str, str]:
        """The persisted trust (`agent.offers.trust`): `{name: JSON}`."""
        rows = self._thread.conn().execute(
            "SELECT key, value FROM meta WHERE key LIKE ?", (TRUST + "%",)
        )
        return {str(k)[len(TRUST) :]: str(v) for k, v in rows}

    def trust_save(self, name: str, value: str) -> None:
        with self._thread.tx() as tx:
            outbox_sql.meta_set(tx, TRUST + name, value)

    def seen(self, message_id: str) -> bool:
        row = self._thread.conn().execute("SELECT 1 FROM seen_ids WHERE id = ?", (message_id,))
        return row.fetchone() is not None

    def add_receipt(self, message_id: str) -> None:
        with self._thread.tx() as tx:
            tx.execute("INSERT OR IGNORE INTO receipts(id) VALUES (?)", (message_id,))

    def apply_bundle(
        self,
        *,
        source: str,
        bundle_id: str,
        offers: Sequence[tuple[str, str]],
        replace_source: bool,
        revokes: Sequence[str],
        receipt: bool,
        kid: str | None = None,
        issued_at: str | None = None,
    ) -> None:
        """Record a verified bundle: seen id, offers (replacing the source's if asked, with
        the key that signed them), revocations, the receipt to send and, for a catalog
        (`issued_at` given), its source's mark, in one transaction."""
        now = self._clock()
        with self._thread.tx() as tx:
            tx.execute("INSERT OR REPLACE INTO seen_ids(id, seen) VALUES (?, ?)", (bundle_id, now))
            if replace_source:
                tx.execute("DELETE FROM offers WHERE source = ?", (source,))
            tx.executemany(
                "INSERT OR REPLACE INTO offers(source, id, bundle_id, offer, received, kid)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(source, oid, bundle_id, body, now, kid) for oid, body in offers],
            )
            if issued_at is not None:
                outbox_sql.meta_set(tx, ISSUED + source, issued_at)
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


class FeatureBuckets:
    """Hourly counts the feature windows are rebuilt from (`agent.features.windows`)."""

    def __init__(self, thread: StoreThread) -> None:
        self._thread = thread

    def load(self) -> list[tuple[str, int, int]]:
        rows = self._thread.conn().execute("SELECT key, hour, count FROM feature_buckets")
        return [(str(k), int(h), int(c)) for k, h, c in rows]

    def prune(self, before_hour: int) -> int:
        with self._thread.tx() as tx:
            cur = tx.execute(
                "DELETE FROM feature_buckets WHERE hour < ? OR count = 0", (before_hour,)
            )
        return cur.rowcount
