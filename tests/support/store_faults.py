"""Faults of the gateway's store, injected in each backend's own terms (no mock of the
store): a full disk and an I/O error at every write.

- SQLite, full: `PRAGMA max_page_count` at the current size. SQLite itself then fails any
  write that needs a new page with `SQLITE_FULL` ("database or disk is full"), the code it
  also gives for ENOSPC, through the same pager path; a write that fits in a page's free
  space still passes, as on a real full disk. Instant and reversible in one connection,
  so it can fail every write of a running gateway and give the space back.
- PostgreSQL, full or I/O error: a statement trigger on every table raising SQLSTATE 53100
  `disk_full` (or 58030 `io_error`), so the server answers each write as it does when it
  cannot extend a file (every table at once, which a tablespace cannot do for the catalogs).
- The real thing, where the test may mount: `tests/gateway/test_disk_full.py` also fills a
  16 MiB tmpfs (the SQLite data directory; a PostgreSQL tablespace) until the kernel
  answers ENOSPC.
- SQLite, I/O error: SQLite has no SQL-level way to fail with `SQLITE_IOERR`; the tests of
  I/O errors use the fault connection of `FailingWrites` at the session seam.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from cloud_gateway.db.backend import Session

UNLIMITED_PAGES = 1_073_741_823
WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER)\b", re.IGNORECASE)


def _pg_tables(store: Session) -> list[str]:
    return [
        r["tablename"]
        for r in store.rows(
            "SELECT c.relname AS tablename FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
            " AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        )
    ]


def fail_writes(store: Session, sqlstate: str = "53100") -> None:
    """Every write from now on fails as on a full disk (`sqlstate` 53100) or, on PostgreSQL,
    with another SQLSTATE (58030: an I/O error). Undo with `allow_writes`."""
    if store.dialect.name == "sqlite":
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {int(pages)}")
        return
    store.conn.execute(
        "CREATE OR REPLACE FUNCTION edgemart_test_fault() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'could not extend file: injected by the test'"
        f" USING ERRCODE = '{sqlstate}'; END $$"
    )
    for table in _pg_tables(store):
        store.conn.execute(
            f'CREATE TRIGGER edgemart_test_fault BEFORE INSERT OR UPDATE OR DELETE ON "{table}"'
            " FOR EACH STATEMENT EXECUTE FUNCTION edgemart_test_fault()"
        )


def allow_writes(store: Session) -> None:
    """Space is back: undo `fail_writes`."""
    if store.dialect.name == "sqlite":
        store.conn.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")
        return
    for table in _pg_tables(store):
        store.conn.execute(f'DROP TRIGGER IF EXISTS edgemart_test_fault ON "{table}"')


class FailingWrites:
    """A SQLite connection whose writes raise `sqlite3.OperationalError` with `code` (an I/O
    error by default) while `failing`: what SQLite raises when the OS fails a write. Put in
    place of a `Store`'s `conn` at the session seam; reads pass through."""

    def __init__(self, conn: sqlite3.Connection, code: int = sqlite3.SQLITE_IOERR) -> None:
        self.conn = conn
        self.code = code
        self.failing = True

    def _check(self, sql: str) -> None:
        if self.failing and WRITE.match(sql):
            error = sqlite3.OperationalError("disk I/O error (injected)")
            error.sqlite_errorcode = self.code
            raise error

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self._check(sql)
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self._check(sql)
        return self.conn.executemany(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)
