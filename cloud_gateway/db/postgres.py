"""The PostgreSQL backend of the store seam: `PostgresStore` (one psycopg 3 connection, the
session the query functions get) and `PostgresDatabase` (its store thread).

What differs from SQLite is said here, in one place:
- placeholders: the shared SQL's `?` and `:name` become psycopg's `%s` and `%(name)s`, and a
  literal `%` becomes `%%`, once per SQL string (`translate`, cached);
- rows are tuples that are also indexed by column name, like `sqlite3.Row`;
- `random_hex16` (no `randomblob`), `latest_reported_signals` (`jsonb` and `DISTINCT ON`
  instead of `json_extract` and SQLite's bare columns beside `max()`);
- transactions are psycopg's (`BEGIN` ... `COMMIT`; row locks, no database write lock);
- migrations are `db/pg_migrations.py`, applied under an advisory lock;
- the dense signal rows of a group commit go through COPY (`db/pg_ingest.py`).
psycopg 3 rather than asyncpg: see docs/scale.md ("Backends").
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import RowMaker, dict_row

from cloud_gateway.db.backend import Clock, Dialect, SignalRow
from cloud_gateway.db.pg_migrations import apply_migrations
from cloud_gateway.db.thread import StoreThread
from cloud_gateway.errors import StoreError
from protocol.ids import format_time, utcnow

PROBE = "readyz-probe"
"""The name `check_writable` writes into `migrations` and rolls back: never committed."""

LATEST_REPORTED_SIGNALS = (
    # PostgreSQL's form of SQLite's `json_extract` + bare columns beside max(at): the JSON
    # values as jsonb (psycopg loads them as Python values), the latest row by DISTINCT ON.
    "SELECT DISTINCT ON (device_id, kind, cat) device_id, seq, kind, at, tier, cat, level"
    # attrs with a `NaN` or an infinity (stored by an older version, see `db/finite.py`)
    # read as none: `::jsonb` would fail the query for every device.
    " FROM (SELECT device_id, seq, kind, at, a -> 'tier' AS tier,"
    " a -> 'category' AS cat, a -> 'level' AS level FROM (SELECT device_id, seq, kind, at,"
    " CASE WHEN attrs ~ '(:|,|\\[)\\s*-?(NaN|Infinity)' THEN NULL ELSE attrs::jsonb END AS a"
    " FROM signals WHERE kind IN ('member_tier', 'consumable_level', 'purchase')"
    " AND (CAST(? AS TEXT) IS NULL OR device_id = ?)) AS raw) AS reports"
    " ORDER BY device_id, kind, cat, at DESC"
)

SIGNALS_IN = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS signals_in (device_id text, id text, seq bigint,"
    " kind text, at text, attrs text, received_day date) ON COMMIT DELETE ROWS"
)
COPY_SIGNALS_IN = "COPY signals_in (device_id, id, seq, kind, at, attrs, received_day) FROM STDIN"
INSERT_SIGNALS_FROM_COPY = (
    "INSERT INTO signals (device_id, id, seq, kind, at, attrs, received_day)"
    " SELECT device_id, id, seq, kind, at, attrs, received_day FROM signals_in"
    " ON CONFLICT DO NOTHING RETURNING device_id, seq"
)
"""The signal rows of a group commit: COPY (~3x executemany, bench/pg_driver_bench.py)."""

POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    random_hex16="left(md5(gen_random_uuid()::text), 16)",
    latest_reported_signals=LATEST_REPORTED_SIGNALS,
)

_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|::|:[A-Za-z_]\w*|\?|%")


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """The shared SQL (`?`, `:name`) in psycopg's placeholders (`%s`, `%(name)s`); `%`
    doubled, inside quotes too; quoted text and `::` casts otherwise left alone."""

    def one(match: re.Match[str]) -> str:
        part = match.group(0)
        if part == "?":
            return "%s"
        if part == "%":
            return "%%"
        if part.startswith("'"):
            return part.replace("%", "%%")
        if part.startswith(":") and part != "::":
            return f"%({part[1:]})s"
        return part

    return _TOKEN.sub(one, sql)


class Row(tuple[Any, ...]):
    """A result row like `sqlite3.Row`: by position, by column name, `dict(row)`."""

    __slots__ = ()
    names: tuple[str, ...] = ()
    positions: dict[str, int] = {}  # noqa: RUF012 - set per result shape by `_rows`

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self.positions[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> tuple[str, ...]:
        return self.names


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    """One `Row` subclass per result shape, so a row holds only its values."""
    return type("Row", (Row,), {"names": names, "positions": {n: i for i, n in enumerate(names)}})


def _rows(cursor: Any) -> RowMaker[Row]:
    names = tuple(d.name for d in cursor.description or ())
    return _row_class(names)


class Connection:
    """`execute` / `executemany` with the shared SQL's placeholders, over psycopg."""

    def __init__(self, raw: psycopg.Connection[Row]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = None, /) -> psycopg.Cursor[Row]:
        return self.raw.execute(translate(sql), parameters if parameters is not None else ())

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> psycopg.Cursor[Row]:
        cur = self.raw.cursor()
        cur.executemany(translate(sql), list(parameters))
        return cur


class PostgresStore:
    """One PostgreSQL connection (autocommit; transactions explicit), used only from the
    thread that made it. Applies the recorded migrations when it connects."""

    def __init__(self, url: str, *, clock: Clock = utcnow) -> None:
        self.clock = clock
        self.dialect: Dialect = POSTGRES
        try:
            raw: psycopg.Connection[Row] = psycopg.connect(url, autocommit=True, row_factory=_rows)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the gateway database: {exc}") from exc
        self.raw = raw
        self.conn = Connection(raw)
        try:
            self.applied = apply_migrations(raw, clock)
            raw.execute(SIGNALS_IN)  # the session's own, outside any transaction
        except psycopg.Error as exc:
            raw.close()
            raise StoreError(f"cannot migrate the gateway database: {exc}") from exc

    def close(self) -> None:
        self.raw.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.raw.transaction():
            yield

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        with self.raw.cursor(row_factory=dict_row) as cur:
            return cur.execute(translate(sql), params).fetchall()

    def one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        with self.raw.cursor(row_factory=dict_row) as cur:
            return cur.execute(translate(sql), params).fetchone()

    def insert_signals(self, groups: Sequence[Sequence[SignalRow]]) -> list[int]:
        """COPY every row of the group into a session-private temporary table, then one
        `INSERT ... SELECT ... ON CONFLICT DO NOTHING` (COPY cannot skip existing keys). The
        rows new per batch are counted from RETURNING by (device_id, seq): two batches of
        one device with one seq (two outboxes) in one group are counted on the first."""
        if not any(groups):
            return [0] * len(groups)
        raw = self.raw
        with raw.cursor().copy(COPY_SIGNALS_IN) as copy:
            for rows in groups:
                for row in rows:
                    copy.write_row(row)
        new = Counter((r[0], r[1]) for r in raw.execute(INSERT_SIGNALS_FROM_COPY).fetchall())
        counts = []
        for rows in groups:
            key = (rows[0][0], rows[0][2]) if rows else None
            counts.append(new.pop(key, 0) if key is not None else 0)
        return counts

    def check_writable(self) -> None:
        """Write a row, read it back, roll back: nothing is kept."""
        try:
            with self.raw.transaction(force_rollback=True):
                self.raw.execute(
                    "INSERT INTO migrations (name, applied_at) VALUES (%s, %s)",
                    [PROBE, format_time(self.clock())],
                )
                found = self.one("SELECT name FROM migrations WHERE name = ?", [PROBE])
        except psycopg.Error as exc:
            raise StoreError(f"the gateway database is not writable: {exc}") from exc
        if found is None:
            raise StoreError("the gateway database did not read back its own write")

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.rows("SELECT name FROM migrations ORDER BY id")]


class PostgresDatabase(StoreThread[PostgresStore]):
    """The PostgreSQL `Backend`: a `PostgresStore` on its store thread."""

    def __init__(self, url: str, *, clock: Clock = utcnow) -> None:
        super().__init__(lambda: PostgresStore(url, clock=clock), POSTGRES, clock)
        self.url = url

    async def open(self) -> PostgresDatabase:
        await super().open()
        return self
