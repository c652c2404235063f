"""Disk space as a state, not a crash: the free space of the data directory, a reserve held in
a pre-allocated slack file, and the `full` state the store enters on SQLITE_FULL or ENOSPC.

The slack file (`DATA_DIR/agent.slack`, `reserve` bytes of real blocks) is released the moment
a write finds the disk full, so what must still happen can: acks delete rows (which in WAL mode
first needs room in the WAL), batches are cut and marked sent, the store opens again after a
restart. While `full`, new data (signals, outcomes, claims) is refused with `DiskFull` (HTTP 507);
`recheck()` (the maintenance loop, every minute, and each refused request at most every
`RECHECK_S`) leaves the state once the free space is back above twice the reserve, and then
re-creates the slack file first. Blocking (file system calls): runs on the store thread.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import DiskFull

log = logging.getLogger(__name__)

SLACK_NAME = "agent.slack"
MIN_RESERVE = 256 * 1024
MAX_RESERVE = 4 * 1024 * 1024
RECHECK_S = 5.0
SQLITE_FULL = 13


def reserve_for(quota: int) -> int:
    """The reserve a store of `quota` bytes keeps: 1/8 of it, within 256 KiB .. 4 MiB (room for
    the WAL of a few acks and a batch cut, and for opening the store again)."""
    return max(MIN_RESERVE, min(MAX_RESERVE, quota // 8))


def is_full(exc: BaseException) -> bool:
    """An SQLITE_FULL ("database or disk is full") or an OSError ENOSPC / EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == SQLITE_FULL) or "disk is full" in str(exc)
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return False


class DiskSpace:
    """The data directory's free space, its slack file and the `full` state."""

    def __init__(
        self,
        directory: Path,
        reserve: int = MIN_RESERVE,
        *,
        free: Callable[[Path], int] | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.reserve = reserve
        self.slack = directory / SLACK_NAME
        self.full = False
        self.full_events = 0
        """Times the store found the disk full (each also released the slack file)."""
        self.free_seen = 0
        """The free space at the last look (what the event loop reports, without a syscall)."""
        self.slack_held = False
        self._free = free or (lambda path: shutil.disk_usage(path).free)
        self._timer = timer
        self._checked = float("-inf")

    def free_bytes(self) -> int:
        try:
            self.free_seen = int(self._free(self.directory))
        except OSError:
            self.free_seen = 0
        return self.free_seen

    def slack_bytes(self) -> int:
        try:
            size = self.slack.stat().st_size
        except OSError:
            size = 0
        self.slack_held = size >= self.reserve
        return size

    def prepare(self) -> None:
        """Before the store opens: without room for the reserve, release the slack (the open
        itself may need it); else make sure the slack is there."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.free_bytes() < self.reserve:
            self.release()
        self.settle()

    def settle(self) -> None:
        """After the open: `full` unless the slack is held or could be made, with room to spare."""
        if self.slack_bytes() >= self.reserve or self._make_slack():
            self.full = False
            return
        if not self.full:
            log.warning(
                "disk of %s nearly full (%d bytes free): new data is refused until there is room",
                self.directory,
                self.free_bytes(),
            )
        self.full = True

    def release(self) -> None:
        """Hand the reserve back to the file system (the disk is full: what must run can)."""
        self.slack_held = False
        try:
            self.slack.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot release the slack file %s: %s", self.slack, exc)  # noqa: TRY400

    def on_full(self, exc: BaseException) -> DiskFull:
        """A write found the disk full: release the slack, enter the `full` state; the error
        to raise (it carries the free space)."""
        if not self.full:
            self.full_events += 1
            log.warning("disk of %s is full (%s): releasing the reserve", self.directory, exc)
        self.full = True
        self.release()
        self._checked = self._timer()
        return DiskFull(self.free_bytes(), str(exc))

    def recheck(self, *, force: bool = False) -> bool:
        """Leave the `full` state when there is room again (twice the reserve free, and the
        slack made again); True while full. At most every `RECHECK_S` unless `force`."""
        if not self.full:
            return False
        now = self._timer()
        if not force and now - self._checked < RECHECK_S:
            return True
        self._checked = now
        if self.free_bytes() >= 2 * self.reserve and self._make_slack():
            self.full = False
            log.warning("disk of %s has room again: taking new data", self.directory)
        return self.full

    def refuse_if_full(self) -> None:
        """For a write of new data: DiskFull while the disk is (still) full."""
        if self.recheck():
            raise DiskFull(self.free_bytes(), "the disk is full; new data waits for room")

    def _make_slack(self) -> bool:
        """Allocate the slack file (real blocks: `posix_fallocate`, else written zeros)."""
        if self.slack_bytes() >= self.reserve:
            return True
        if self.free_bytes() < self.reserve:
            return False
        tmp = self.slack.with_name(SLACK_NAME + ".tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.reserve)
                except OSError as exc:
                    if is_full(exc):
                        raise
                    os.write(fd, bytes(self.reserve))  # a file system without fallocate
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self.slack)
            self.slack_held = True
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not is_full(exc):
                log.error("cannot make the slack file %s: %s", self.slack, exc)  # noqa: TRY400
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """What status and readiness report (as last seen: no file system call)."""
        return {
            "full": self.full,
            "free_bytes": self.free_seen,
            "reserve_bytes": self.reserve,
            "reserve_held": self.slack_held,
            "full_events": self.full_events,
        }
