"""The agent's loops, owned and supervised: each named; one that dies is logged, counted and
restarted with backoff, and readiness shows it down meanwhile. Also `cancel_and_wait`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from agent.runtime.metrics import Metrics

log = logging.getLogger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0


class Supervisor:
    """Runs named loops until `close`; `down()` names those not running now."""

    def __init__(
        self,
        prefix: str,
        metrics: Metrics,
        *,
        first_delay: float = RESTART_FIRST_S,
        max_delay: float = RESTART_MAX_S,
    ) -> None:
        self._prefix = prefix
        self._metrics = metrics
        self._first = first_delay
        self._max = max_delay
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, bool] = {}
        self._once: set[asyncio.Task[None]] = set()

    def start(self, name: str, loop: LoopFactory) -> None:
        """Run `loop()` as the loop `name`, restarted whenever it raises or returns."""
        self._running[name] = True
        task = asyncio.create_task(self._keep(name, loop), name=f"{self._prefix}-{name}")
        self._tasks[name] = task

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """A one-off task (not restarted), owned so that `close` cancels it."""
        task = asyncio.create_task(coro, name=f"{self._prefix}-{name}")
        self._once.add(task)
        task.add_done_callback(self._once_done)

    def down(self) -> list[str]:
        """Names of the owned loops not running now (dead and waiting for their restart)."""
        return sorted(name for name, up in self._running.items() if not up)

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)

    async def close(self) -> bool:
        """Cancel every loop and one-off task; True when all stopped."""
        tasks = [*self._tasks.values(), *self._once]
        self._tasks.clear()
        self._once.clear()
        return await cancel_and_wait(tasks)

    async def _keep(self, name: str, loop: LoopFactory) -> None:
        delay = self._first
        while True:
            self._running[name] = True
            try:
                await loop()
                log.error("loop %s-%s returned; restarting", self._prefix, name)
            except asyncio.CancelledError:
                self._running[name] = False
                raise
            except Exception:
                log.exception("loop %s-%s died; restarting in %.1f s", self._prefix, name, delay)
            self._running[name] = False
            self._metrics.inc("loop_restarts")
            self._metrics.inc(f"loop_restarts_{name}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max)

    def _once_done(self, task: asyncio.Task[None]) -> None:
        self._once.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s died: %r", task.get_name(), exc, exc_info=exc)


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
