"""`python -m tests.support.crash_agent agent run ...`: the agent, which kills itself with
SIGKILL right after the transaction of a request keyed `crash-...` commits and before its
answer leaves: the deterministic crash point of the idempotent intake fault test."""

from __future__ import annotations

import os
import signal

from agent.intake.service import Intake
from agent.intake.validate import SignalIn
from agent.store import idempotency
from edgemart.cli import main

_accept = Intake.accept_parsed


async def _accept_then_die(self: Intake, signals: list[SignalIn]) -> list[str]:
    ids = await _accept(self, signals)  # committed, key and rows in one transaction
    keyed = idempotency.current()
    if keyed is not None and keyed.key.startswith("crash-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return ids


Intake.accept_parsed = _accept_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main())
