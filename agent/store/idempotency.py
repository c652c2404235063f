"""Idempotency keys of the local API: the key of a request committed in the SAME transaction as
the rows it wrote, with the answer it got, so a retry after a crash between the commit and the
response finds the original answer and stores nothing new.

The key rides from the HTTP handler to the one write transaction of its request in a context
variable (`intent`), set by the API and filled with its answer by the domain code just before
it writes (`answer_with`); the write methods (`Outbox.accept`, `DecisionLog.record_outcome`,
`ClaimRows.open`) call `record(tx, now)` inside their transaction. `StoreThread.call` runs every
store call in a copy of the caller's context, so the variable reaches the store thread.
Keys live `TTL_S` (24 h) and at most `MAX_KEYS` are kept (oldest go first): the table is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError, StoreError
from agent.store.thread import StoreThread

TTL_S = 24 * 3600.0
MAX_KEYS = 10_000
MAX_KEY_CHARS = 64


class DuplicateRequest(AgentError):
    """Another request with the same key committed first (a concurrent retry): look again."""

    def __init__(self, route: str, key: str) -> None:
        super().__init__(f"request {route} {key!r} was committed by a concurrent retry")
        self.route = route
        self.key = key


@dataclass(slots=True)
class Intent:
    """One keyed request on its way to its write: filled with its answer before the write."""

    route: str
    key: str
    fingerprint: str
    status: int | None = None
    body: dict[str, Any] | None = None
    recorded: bool = False


@dataclass(frozen=True, slots=True)
class Stored:
    """A key already committed: the request's fingerprint and its answer."""

    fingerprint: str
    status: int
    body: dict[str, Any]


_intent: ContextVar[Intent | None] = ContextVar("edgemart_idempotency", default=None)


def fingerprint(body: object) -> str:
    """The same request body, however its keys were ordered or spaced: one digest."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def key_problem(key: str) -> str | None:
    """Why a header value cannot be an idempotency key (opaque, 1..64 printable ASCII)."""
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        return f"must be 1..{MAX_KEY_CHARS} characters"
    if not (key.isascii() and key.isprintable()):
        return "must be printable ASCII"
    return None


@contextlib.contextmanager
def intent(route: str, key: str, digest: str) -> Iterator[Intent]:
    """Within this block (and the store calls it makes), writes record `key`."""
    current = Intent(route, key, digest)
    token = _intent.set(current)
    try:
        yield current
    finally:
        _intent.reset(token)


def current() -> Intent | None:
    """The keyed request this code runs for, if any."""
    return _intent.get()


def answer_with(status: int, body: dict[str, Any]) -> None:
    """The answer the request will get if its write commits (no-op without a key)."""
    current = _intent.get()
    if current is not None:
        current.status, current.body = status, body


def record(tx: sqlite3.Connection, now: float) -> None:
    """Inside the request's write transaction: commit its key with its answer."""
    current = _intent.get()
    if current is None or current.status is None or current.recorded:
        return
    try:
        tx.execute(
            "INSERT INTO idempotency(route, key, fingerprint, status, answer, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                current.route,
                current.key,
                current.fingerprint,
                current.status,
                json.dumps(current.body, separators=(",", ":")),
                now,
            ),
        )
    except sqlite3.IntegrityError as exc:
        raise DuplicateRequest(current.route, current.key) from exc
    current.recorded = True


class IdempotencyKeys:
    """The committed keys: look one up, prune the expired and the surplus."""

    def __init__(self, thread: StoreThread, clock: Callable[[], float]) -> None:
        self._thread = thread
        self._clock = clock

    def find(self, route: str, key: str) -> Stored | None:
        """The committed request of `key` on `route`, if it has not expired."""
        try:
            row = (
                self._thread.conn()
                .execute(
                    "SELECT fingerprint, status, answer FROM idempotency"
                    " WHERE route = ? AND key = ? AND created >= ?",
                    (route, key, self._clock() - TTL_S),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read idempotency keys: {exc}") from exc
        if row is None:
            return None
        return Stored(str(row[0]), int(row[1]), json.loads(row[2]))

    def prune(self) -> int:
        """Drop keys past `TTL_S` and the oldest beyond `MAX_KEYS`; how many went."""
        count, oldest = (
            self._thread.conn().execute("SELECT COUNT(*), MIN(created) FROM idempotency").fetchone()
        )
        if count <= MAX_KEYS and (oldest is None or oldest >= self._clock() - TTL_S):
            return 0  # nothing to drop: no write (and no fsync) at all
        with self._thread.tx() as tx:
            gone = tx.execute(
                "DELETE FROM idempotency WHERE created < ?", (self._clock() - TTL_S,)
            ).rowcount
            gone += tx.execute(
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency"
                " ORDER BY created DESC LIMIT -1 OFFSET ?)",
                (MAX_KEYS,),
            ).rowcount
        return int(gone)

    def count(self) -> int:
        (n,) = self._thread.conn().execute("SELECT COUNT(*) FROM idempotency").fetchone()
        return int(n)
