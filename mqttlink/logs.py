"""Rate-limited logging for peer faults: the first of each kind loud, the rest at DEBUG.

Flash is finite and a peer chooses what it sends: each key is logged at `level` once, then
at `again` (DEBUG by default, None: not at all). The keys remembered are bounded; once
`max_keys` are held, a new key is treated as seen (quiet), so a peer that varies its fault
cannot turn this back into a log line per message.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

FURTHER = " (further ones at DEBUG)"


class OnceLogger:
    """Logs the first occurrence of each key at `level`, later ones at `again` (bounded)."""

    def __init__(
        self,
        logger: logging.Logger,
        max_keys: int = 256,
        *,
        level: int = logging.WARNING,
        again: int | None = logging.DEBUG,
        suffix: str = FURTHER,
    ) -> None:
        self._logger = logger
        self._seen: set[Hashable] = set()
        self._max_keys = max_keys
        self._level = level
        self._again = again
        self._suffix = suffix

    def _first(self, key: Hashable) -> bool:
        """True the first time `key` is seen while there is room to remember it."""
        if key in self._seen or len(self._seen) >= self._max_keys:
            return False
        self._seen.add(key)
        return True

    def log(self, key: Hashable, msg: str, *args: object) -> None:
        if self._first(key):
            self._logger.log(self._level, "%s%s", msg % args if args else msg, self._suffix)
        elif self._again is not None:
            self._logger.log(self._again, msg, *args)
