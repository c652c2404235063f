"""The one waiter: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def eventually(
    check: Callable[[], object], timeout: float = 20.0, what: str = "", *, step: float = 0.05
) -> Any:
    """Call `check` (plain or async) every `step` seconds until it returns something truthy,
    and return that. Past `timeout` seconds, fail naming what was waited for (`what`, else
    the check's name or source line) and the last value seen.

    Polls state owned by another task or process: a condition, not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not met within {timeout}s: {what or _describe(check)} (last: {last!r})"
            )
        await asyncio.sleep(step)


def _describe(check: Callable[[], object]) -> str:
    name = getattr(check, "__qualname__", "")
    if name and "<lambda>" not in name:
        return str(name)
    try:  # a lambda says most by its source line
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return repr(check)
