"""Rate-limited logging: peer faults (the first of each kind loud, the rest at DEBUG) and a
link's outages (`OutageLog`: told when they begin, now and then while they last, and when
the link is back).

Flash is finite and a peer chooses what it sends: each key is logged at `level` once, then
at `again` (DEBUG by default, None: not at all). The keys remembered are bounded; once
`max_keys` are held, a new key is treated as seen (quiet), so a peer that varies its fault
cannot turn this back into a log line per message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

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


class OutageLog:
    """What a daemon says about its broker link, at WARNING so the default log level shows it:
    the first failure of an outage, a reminder every `every_s` while it lasts (each retry in
    between at DEBUG), and the link coming back with how long it was down. The first connect
    of a healthy start is told at INFO only."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._every = every_s
        self._clock = clock
        self._since: float | None = None
        self._told = 0.0

    @property
    def down_since(self) -> float | None:
        """When the current outage began (the clock's time), None while the link is up."""
        return self._since

    def down(self, broker: str, error: object, delay: float) -> None:
        now = self._clock()
        if self._since is None:
            self._since = self._told = now
            self._logger.warning(
                "cannot reach the broker %s (%s); retrying in the background", broker, error
            )
        elif now - self._told >= self._every:
            self._told = now
            self._logger.warning(
                "the broker %s is still unreachable after %.0f s (%s); still retrying",
                broker,
                now - self._since,
                error,
            )
        else:
            self._logger.debug("link down (%s); retrying in %.1f s", error, delay)

    def up(self, broker: str, detail: str = "") -> None:
        extra = f" {detail}" if detail else ""
        if self._since is None:
            self._logger.info("link up to %s%s", broker, extra)
            return
        down_s = self._clock() - self._since
        self._since = None
        self._logger.warning("link back to %s%s after %.0f s down", broker, extra, down_s)


class LateAckFilter(logging.Filter):
    """Drops aiomqtt's ERROR with a traceback for a SUBACK or UNSUBACK that arrives after its
    caller stopped waiting (the task cancelled at shutdown): aiomqtt forgets the pending
    request on cancel, then logs the broker's late answer as "Unexpected message ID" with
    `logger.exception` (aiomqtt/client.py `_on_subscribe`, v2.x). Nothing is lost: the
    caller went away. It is told once at DEBUG here instead."""

    PREFIX = "Unexpected message ID"

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.PREFIX):
            logging.getLogger(__name__).debug(
                "a late answer to a request nobody waits for: %s", record.getMessage()
            )
            return False
        return True


def quiet_late_acks(logger: logging.Logger) -> None:
    """Install `LateAckFilter` on aiomqtt's logger (once)."""
    if not any(isinstance(f, LateAckFilter) for f in logger.filters):
        logger.addFilter(LateAckFilter())
