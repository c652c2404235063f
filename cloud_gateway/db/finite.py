"""Non-finite numbers older versions stored (before every number from outside was finite):
read as null, and cleaned once by a recorded migration of each backend.

Before issue 13 the uplink let `NaN` and infinities through in a signal's `attrs` (stored as
`NaN` / `Infinity` in the JSON text) and the API parsed them in bodies. Such a row made
SQLite's `json_extract` and PostgreSQL's `::jsonb` fail, so one device's data failed every
targeted launch; exported, it was no longer JSON. Both backends' migrations call
`clean_non_finite`; `from_text` and `finite_or_none` read what is left as null.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol

from cloud_gateway.db.rows import to_text

TEXT_COLUMNS = (
    ("signals", ("device_id", "id"), "attrs"),
    ("devices", ("device_id",), "stats"),
    ("outcome_features", ("device_id", "id"), "features"),
)
"""(table, key columns, column) of the JSON text a device's data fills."""
REAL_COLUMNS = (("outcomes", "score", "NULL"), ("aggregates", "seconds", "0"))
"""(table, column, what a non-finite value becomes) of the numbers a device's data fills."""


class _Conn(Protocol):
    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


def _null(_literal: str) -> None:
    return None


def from_text(text: str) -> Any:
    """JSON text of one of our own columns; a `NaN` or infinity in it reads as null."""
    return json.loads(text, parse_constant=_null)


def finite_or_none(value: Any) -> Any:
    """A stored number as exported: a non-finite float is None, anything else as it is."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def finite_text(text: str | None) -> str | None:
    """Pure: `text` with every non-finite number made null, or None when it has none (or is
    not JSON at all: left as it is)."""
    if not text:
        return None
    found: list[str] = []

    def constant(literal: str) -> None:
        found.append(literal)

    def number(literal: str) -> float | None:
        value = float(literal)
        if math.isfinite(value):
            return value
        found.append(literal)
        return None

    try:
        obj = json.loads(text, parse_constant=constant, parse_float=number)
    except (ValueError, RecursionError):
        return None
    return to_text(obj) if found else None


def clean_non_finite(conn: _Conn, placeholder: str, non_finite: str) -> int:
    """Make null every non-finite number stored in a device's data; the rows changed.

    `conn` is the driver's own (inside the migration's transaction); `placeholder` its
    parameter mark; `non_finite` the SQL list of non-finite reals (`9e999, -9e999` in
    SQLite, which stores NaN as NULL; `'NaN', 'Infinity', '-Infinity'` in PostgreSQL).
    """
    changed = 0
    for table, keys, column in TEXT_COLUMNS:
        names = ", ".join(keys)
        match = " AND ".join(f"{k} = {placeholder}" for k in keys)
        rows = conn.execute(
            f"SELECT {names}, {column} FROM {table}"  # noqa: S608 - fixed names
            f" WHERE {column} LIKE '%NaN%' OR {column} LIKE '%Infinity%'"
        ).fetchall()
        for row in rows:
            fixed = finite_text(row[len(keys)])
            if fixed is not None:
                conn.execute(
                    f"UPDATE {table} SET {column} = {placeholder} WHERE {match}",  # noqa: S608
                    [fixed, *(row[i] for i in range(len(keys)))],
                )
                changed += 1
    for table, column, value in REAL_COLUMNS:
        cur = conn.execute(
            f"UPDATE {table} SET {column} = {value}"  # noqa: S608 - fixed names
            f" WHERE {column} IN ({non_finite})"
        )
        changed += max(cur.rowcount, 0)
    return changed
