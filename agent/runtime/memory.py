"""The profile's memory budget: the agent's resident set measured, compared, reported, and
what the agent can shed when it is over (docs/durability.md, "Memory").

Measuring is one read of `/proc/self/statm` (Linux); elsewhere `resource.getrusage` gives
the peak resident set instead, which is the best a portable process can do. The budget
arithmetic (`MemoryBudget`, `sqlite_cache_kib`) is pure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MB = 1024 * 1024
STATM = Path("/proc/self/statm")
MAPS = Path("/proc/self/maps")
MADV_PAGEOUT = 21
"""madvise(2): reclaim the range now (Linux 5.4+). Clean file pages are dropped, to be read
again from the file when next touched."""
SETTLE_S = 30.0
"""Start-up does not end when the agent's start returns: the broker session, the household's
discovery and pairing, the first signed catalog verified happen in the seconds after it and
touch library pages the steady state does not (a thin speaker in a household: 6 MB, most of
it cryptography's and pydantic-core's code; `bench.thin_bench`). One more page-out this long
after start hands those back, whatever the last one's age."""
WARN_EVERY_S = 600.0
"""Over budget is logged at WARNING at most once per this many seconds (flash is finite)."""
PAGE_OUT_EVERY_S = 600.0
"""Over budget, clean pages are handed back at most once per this many seconds: an agent
that stays over (a budget set below its floor) would otherwise read its working set back
from flash after every sample."""


def rss_bytes() -> int:
    """This process's resident set now (Linux), or its peak (elsewhere)."""
    try:
        resident_pages = int(STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def sqlite_cache_kib(budget_mb: int) -> int:
    """The store's page cache from the budget: 1/64 of it, between 256 KiB and 2 MiB
    (SQLite's default is 2 MiB)."""
    return max(256, min(2048, budget_mb * 1024 // 64))


@dataclass(slots=True)
class MemoryBudget:
    """Compares samples of the resident set with `budget_mb`; counts and rate-limits logs."""

    budget_mb: int
    shared: bool = False
    """The process also runs other things (a simulator's many agents, a test runner): its
    resident set is not this agent's, so samples are recorded but never judged."""
    rss: int = 0
    peak: int = 0
    over_count: int = 0
    """Samples that found the agent over its budget."""
    paged_out_at: float | None = None
    """When clean pages were last handed back (monotonic seconds)."""
    settled: bool = False
    """The page-out after start-up settled (`SETTLE_S`) is done."""
    _last_warned: float | None = field(default=None, repr=False)

    @property
    def budget_bytes(self) -> int:
        return self.budget_mb * MB

    def observe(self, rss: int, now: float) -> bool:
        """Record one sample; True when it is over the budget (the caller sheds memory)."""
        self.rss = rss
        self.peak = max(self.peak, rss)
        if self.shared or rss <= self.budget_bytes:
            return False
        self.over_count += 1
        if self._last_warned is None or now - self._last_warned >= WARN_EVERY_S:
            self._last_warned = now
            log.warning(
                "agent memory %.1f MB is over the profile budget of %d MB (%d samples over);"
                " shedding caches",
                rss / MB,
                self.budget_mb,
                self.over_count,
            )
        else:
            log.debug("agent memory %.1f MB over budget %d MB", rss / MB, self.budget_mb)
        return True

    def page_out_due(self, now: float) -> bool:
        """True (and `now` recorded) when the last page-out is `PAGE_OUT_EVERY_S` old or
        there was none; always False in a shared process (the pages are its neighbours')."""
        if self.shared:
            return False
        if self.paged_out_at is not None and now - self.paged_out_at < PAGE_OUT_EVERY_S:
            return False
        self.paged_out_at = now
        return True

    def settle_due(self, now: float) -> bool:
        """True once (and `now` recorded): the page-out when start-up has settled, whatever
        the last one's age; always False in a shared process."""
        if self.shared or self.settled:
            return False
        self.settled = True
        self.paged_out_at = now
        return True

    def to_json(self) -> dict[str, float | int]:
        return {
            "rss_mb": round(self.rss / MB, 1),
            "peak_mb": round(self.peak / MB, 1),
            "budget_mb": self.budget_mb,
            "over_budget_samples": self.over_count,
            **({"shared_process": True} if self.shared else {}),
        }


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, found once: `find_library` runs `ldconfig -p` in a subprocess on every call."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def trim_heap() -> bool:
    """Give freed heap pages back to the OS (glibc `malloc_trim`); False where there is none.

    CPython's allocator keeps freed arenas mapped; after caches are dropped this is what
    makes the resident set actually shrink. https://man7.org/linux/man-pages/man3/malloc_trim.3.html
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        trim = libc.malloc_trim
    except AttributeError:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


def page_out_clean_file_pages(maps: Path = MAPS) -> int | None:
    """Hand this process's clean file-backed pages back to the kernel (`MADV_PAGEOUT`):
    the read-only and code mappings of its libraries and files. Bytes of resident set given
    back, or None where the kernel or libc cannot (not Linux, a kernel before 5.4).

    Start-up touches far more library code than a running agent uses again (onnxruntime
    registers every kernel of every operator; imports run module bodies once): ~40 MB of
    the agent's resident set right after start is such pages. The kernel keeps them until
    memory runs short; a device's budget counts them until then. Pages still in use come
    back as (minor, or from flash major) faults. Android's app compaction does the same to
    cached apps. Writable mappings are left alone: their pages may be dirty (anonymous).
    https://man7.org/linux/man-pages/man2/madvise.2.html
    """
    libc = _libc()
    if libc is None or not sys.platform.startswith("linux"):
        return None
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    before = rss_bytes()
    advised = refused = 0
    for line in lines:
        parts = line.split(maxsplit=5)
        # address perms offset dev inode path; a path, not [heap] or [stack]; read-only
        if len(parts) < 6 or not parts[5].startswith("/") or "w" in parts[1]:
            continue
        start, _, end = parts[0].partition("-")
        low, high = int(start, 16), int(end, 16)
        if madvise(low, high - low, MADV_PAGEOUT) == 0:
            advised += 1
        else:
            refused += 1
    if refused and not advised:
        return None  # EINVAL throughout: this kernel has no MADV_PAGEOUT
    return max(0, before - rss_bytes())
