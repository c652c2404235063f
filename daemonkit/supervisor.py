"""Supervised loops, one copy for both daemons: each loop named and owned; one that dies is
logged, counted and restarted with capped backoff, and `down()` shows it (readiness answers
503) until it runs again. Shutdown cancels every loop for sure (`cancel_and_wait`).

Not an `asyncio.TaskGroup` on purpose: a TaskGroup cancels every sibling when one task
fails, and a daemon must instead keep the others running and bring the failed one back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0


class Supervisor:
    """Owns named loops: `start(name, factory)`; `down()` names those not running now.

    `restart_on_return`: a loop that returns is started again too (the agent's loops are
    meant to run forever); otherwise a return ends it (shown down, not restarted).
    `on_restart(name)` is called at each restart (the agent counts them in its metrics).
    `healthy_after` (default `max_delay`): a loop that ran at least that long before it died
    is restarted after `first_delay` again, not after the backoff of earlier crashes (a loop
    that fails once a day is not made to wait the cap each time).
    """

    def __init__(
        self,
        prefix: str = "",
        *,
        first_delay: float = FIRST_DELAY_S,
        max_delay: float = MAX_DELAY_S,
        restart_on_return: bool = False,
        on_restart: Callable[[str], None] | None = None,
        healthy_after: float | None = None,
    ) -> None:
        self.restarts: Counter[str] = Counter()
        self._prefix = prefix
        self._first = first_delay
        self._max = max_delay
        self._restart_on_return = restart_on_return
        self._on_restart = on_restart
        self._healthy_after = max_delay if healthy_after is None else healthy_after
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, bool] = {}

    def _task_name(self, name: str) -> str:
        return f"{self._prefix}-{name}" if self._prefix else name

    def start(self, name: str, factory: LoopFactory) -> None:
        """Run `factory()` as the loop `name`, again after each crash."""
        self._running[name] = True
        self._tasks[name] = asyncio.create_task(
            self._keep(name, factory), name=self._task_name(name)
        )

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)

    def down(self) -> list[str]:
        """The loops not running now (crashed and waiting to restart, or ended)."""
        return sorted(n for n, up in self._running.items() if not up)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            n: {"running": self._running[n], "restarts": self.restarts[n]}
            for n in sorted(self._running)
        }

    async def _keep(self, name: str, factory: LoopFactory) -> None:
        delay = self._first
        label = self._task_name(name)
        clock = asyncio.get_running_loop().time
        while True:
            self._running[name] = True
            started = clock()
            failure: Exception | None = None
            try:
                await factory()
            except asyncio.CancelledError:
                self._running[name] = False
                raise
            except Exception as exc:  # noqa: BLE001 - logged below with its traceback
                failure = exc
            else:
                if not self._restart_on_return:
                    self._running[name] = False
                    return
            self._running[name] = False
            if clock() - started >= self._healthy_after:
                delay = self._first  # it ran well for a while: this is a new fault
            if failure is not None:
                log.error("loop %s died; restarting in %.1f s", label, delay, exc_info=failure)
            else:
                log.error("loop %s returned; restarting in %.1f s", label, delay)
            self.restarts[name] += 1
            if self._on_restart is not None:
                self._on_restart(name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max)

    async def stop(self, *, last: tuple[str, ...] = (), last_timeout_s: float = 5.0) -> bool:
        """Cancel every loop, those named in `last` after the others (and given
        `last_timeout_s` to finish what their cancellation starts, e.g. a flush); True when
        all stopped."""
        others = [t for n, t in self._tasks.items() if n not in last]
        finals = [t for n, t in self._tasks.items() if n in last]
        stopped = await cancel_and_wait(others)
        for task in finals:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*finals, return_exceptions=True), last_timeout_s)
        stopped = stopped and all(t.done() for t in finals)
        self._tasks.clear()
        self._running.clear()
        return stopped

    async def close(self) -> bool:
        """Cancel every loop; True when all stopped."""
        return await self.stop()


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[None]], *, retry_s: float = 1.0, give_up_s: float = 30.0
) -> bool:
    """Cancel `tasks` and wait until all are done; True when they are.

    On Python 3.11, `asyncio.wait_for` can swallow a cancellation that arrives as its inner
    future completes (CPython gh-86296, fixed in 3.12); aiomqtt waits for CONNACK that way,
    so a link cancelled mid-connect may run on. Tasks still pending after `retry_s` are
    cancelled again, until `give_up_s`.
    """
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_s
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)
        if pending and loop.time() > deadline:
            log.error("tasks did not stop: %s", ", ".join(t.get_name() for t in pending))
            return False
    return True
