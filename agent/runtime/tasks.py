"""Stopping the daemon's tasks for sure: cancel, wait, and cancel again what ignored it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


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
