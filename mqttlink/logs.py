"""Rate-limited logging for peer faults: the first of each kind at WARNING, the rest at DEBUG."""

from __future__ import annotations

import logging


class OnceLogger:
    """Logs the first occurrence of each key at WARNING, later ones at DEBUG (bounded keys)."""

    def __init__(self, logger: logging.Logger, max_keys: int = 256) -> None:
        self._logger = logger
        self._seen: set[str] = set()
        self._max_keys = max_keys

    def log(self, key: str, msg: str, *args: object) -> None:
        if key in self._seen:
            self._logger.debug(msg, *args)
            return
        if len(self._seen) < self._max_keys:
            self._seen.add(key)
        text = msg % args if args else msg
        self._logger.warning("%s (further ones at DEBUG)", text)
