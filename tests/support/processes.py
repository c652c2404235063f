"""Real `edgemart` processes for the tests: spawn, wait for /healthz, tail the log, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.waiting import eventually

EDGEMART = (sys.executable, "-m", "edgemart")


def spawn(
    args: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] = EDGEMART,
) -> subprocess.Popen[bytes]:
    """`python -m edgemart <args>` (or `command <args>`), stdout and stderr appended to `log`
    (a restarted process adds to the same log); `env` adds to this process's environment."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*command, *args], stdout=handle, stderr=subprocess.STDOUT, env=full
        )


def tail(log: Path, chars: int = 3000) -> str:
    """The end of a process's log, for a failure message."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, up to `timeout` seconds to exit, then SIGKILL; the exit code (negative when
    a signal ended it). A process that already exited is left as it is."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def wait_healthy(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 20.0,
    ready: Callable[[Any], bool] | None = None,
) -> Any:
    """Poll `url` (a /healthz) until it answers 200 and, if given, `ready(body)` holds; the
    JSON body. Fails at once if `proc` exits, and on either failure shows the end of `log`."""

    async def healthy() -> Any:
        assert proc.poll() is None, f"the process exited early (code {proc.returncode})"
        try:
            async with http.get(url) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError):  # not listening yet, or too busy to answer
            return None
        return body if ready is None or ready(body) else None

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        try:
            return await eventually(healthy, timeout, f"{url} healthy", step=0.1)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- {log.name}:\n{tail(log)}") from None


async def start_gateway(
    broker: str, data_dir: Path, port: int, log: Path, *extra: str, timeout: float = 20.0
) -> subprocess.Popen[bytes]:
    """`edgemart gateway run` on 127.0.0.1:`port`, returned once its /healthz answers
    (stopped again if it never does); `extra` are more `gateway run` options."""
    proc = spawn(
        [
            *("gateway", "run", "--broker", broker, "--data-dir", str(data_dir)),
            *("--http-port", str(port), *extra),
        ],
        log,
    )
    try:
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc
