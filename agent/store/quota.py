"""Disk quota arithmetic, pure: how a profile's outbox quota splits between SQLite's fixed
pages, its WAL and shared-memory files, and the budget left for outbox rows.

The profile's `budgets.outbox_max_bytes` bounds the store's files on disk: `agent.sqlite3`
plus `-wal` plus `-shm`. The rows' charges (`agent.intake.aggregates.signal_charge`) are calibrated
to cover the pages the rows really occupy, so the rows get what is left after:

- one page per b-tree of the schema (every table and index has at least its root page),
- the WAL: checkpointed every `wal_pages` pages and truncated back to that size after a
  checkpoint (`journal_size_limit`); between checkpoints it holds at most the threshold plus
  the transaction that crossed it, so twice the threshold is reserved,
- the `-shm` index of the WAL (32 KiB for a WAL this small).
"""

from __future__ import annotations

from dataclasses import dataclass

SHM_BYTES = 32 * 1024
WAL_FRAME_HEADER = 24
WAL_HEADER = 32
MIN_WAL_PAGES = 8
MAX_WAL_PAGES = 1000  # SQLite's default checkpoint threshold
MIN_ROWS_SHARE = 4
"""At least 1/4 of the quota goes to rows, however small the quota (a quota under ~300 KB
cannot then be honoured on disk: docs/durability.md)."""


@dataclass(frozen=True, slots=True)
class DiskPlan:
    """What a disk quota allows: the rows' budget, and the WAL settings that keep it."""

    quota: int
    rows: int
    wal_pages: int
    wal_limit: int
    """`PRAGMA journal_size_limit`: bytes the WAL file is truncated to after a checkpoint."""
    reserved: int
    """Bytes of the quota kept for fixed pages, WAL and shm (quota - rows, or more)."""


def plan(quota: int, page_size: int, btrees: int) -> DiskPlan:
    """Split `quota` bytes of disk for a database of `btrees` tables and indexes."""
    wal_pages = max(MIN_WAL_PAGES, min(MAX_WAL_PAGES, quota // 32 // page_size))
    frame = page_size + WAL_FRAME_HEADER
    wal_limit = WAL_HEADER + wal_pages * frame
    fixed = (btrees + 1) * page_size  # +1: page 1, the schema itself
    reserved = fixed + 2 * wal_limit + SHM_BYTES
    rows = max(quota - reserved, quota // MIN_ROWS_SHARE)
    return DiskPlan(quota, rows, wal_pages, wal_limit, reserved)
