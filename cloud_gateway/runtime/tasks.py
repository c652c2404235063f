"""The gateway's long-running loops, supervised: a loop that dies is logged, counted and
restarted with capped backoff, and shows as not running in readiness until it is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


class Supervisor:
    """Owns named loops: `start(name, factory)`; `down()` names those not running now."""

    def __init__(
        self, *, backoff_first_s: float = BACKOFF_FIRST_S, backoff_max_s: float = BACKOFF_MAX_S
    ) -> None:
        self.restarts: Counter[str] = Counter()
        self._first = backoff_first_s
        self._max = backoff_max_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, bool] = {}

    def start(self, name: str, factory: LoopFactory) -> None:
        """Run `factory()` as the loop `name`, again after each crash (not after a return)."""
        self._running[name] = True
        self._tasks[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def _keep(self, name: str, factory: LoopFactory) -> None:
        delay = self._first
        while True:
            self._running[name] = True
            try:
                await factory()
            except asyncio.CancelledError:
                self._running[name] = False
                raise
            except Exception:
                # A bug or an unexpected error: the loop must not stay dead silently.
                self._running[name] = False
                self.restarts[name] += 1
                log.exception(
                    "loop %s died (restart %d in %.1fs)", name, self.restarts[name], delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max)
                continue
            self._running[name] = False
            return

    def down(self) -> list[str]:
        """The loops not running now (crashed and waiting to restart, or ended)."""
        return sorted(n for n, up in self._running.items() if not up)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            n: {"running": self._running[n], "restarts": self.restarts[n]}
            for n in sorted(self._running)
        }

    async def stop(self, *, last: tuple[str, ...] = (), last_timeout_s: float = 5.0) -> None:
        """Cancel every loop, those named in `last` after the others (and given
        `last_timeout_s` to finish what their cancellation starts, e.g. a flush)."""
        others = [t for n, t in self._tasks.items() if n not in last]
        while others:  # cancel again what a swallowed cancellation (CPython gh-86296) left
            for task in others:
                task.cancel()
            _, pending = await asyncio.wait(others, timeout=1.0)
            others = list(pending)
        finals = [t for n, t in self._tasks.items() if n in last]
        for task in finals:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*finals, return_exceptions=True), last_timeout_s)
        self._tasks.clear()
        self._running.clear()
