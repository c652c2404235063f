"""What many tests share: waiting for a condition to a deadline, an in-process gateway's
settings on a shared broker, and real `edgemart` processes (spawn, wait for /healthz, stop)."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
from sqlite_utils import Database as SqliteDatabase

from cloud_gateway.config import GatewaySettings
from cloud_gateway.db import migrations
from protocol.envelopes import Batch, Outcome, OutcomeKind, Signal
from protocol.ids import new_id, utcnow
from simulators.brokers import MosquittoProcess

EDGEMART = (sys.executable, "-m", "edgemart")


# ---------------------------------------------------------------- conditions


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


# ---------------------------------------------------------------- an in-process gateway


def gateway_settings(tmp_path: Path, broker: MosquittoProcess, **overrides: Any) -> GatewaySettings:
    """Settings of a gateway in this process: data in tmp_path/gw, any free HTTP port, a topic
    root and client id of its own (other tests share the broker), acks sent after 2 ms."""
    tag = uuid.uuid4().hex[:10]
    fields: dict[str, Any] = {
        "broker": broker.url,
        "data_dir": tmp_path / "gw",
        "http_port": 0,
        "topic_root": f"t{tag}/v1",
        "client_id": f"gw-{tag}",
        "ack_delay_ms": 2,
    }
    return GatewaySettings(**{**fields, **overrides})


# ---------------------------------------------------------------- real processes


def spawn(
    args: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m edgemart <args>`, stdout and stderr appended to `log` (a restarted process
    adds to the same log); `env` adds to this process's environment."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*EDGEMART, *args], stdout=handle, stderr=subprocess.STDOUT, env=full
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


def gateway_db_before(path: Path, migration: migrations.Migration, sql: Sequence[str]) -> None:
    """A gateway database as a release before `migration` left it: the migrations before it
    applied, then `sql` run on it (the old rows a test wants migrated)."""
    mine = migrations.MIGRATIONS.index(migration)
    before, rest = migrations.MIGRATIONS[:mine], migrations.MIGRATIONS[mine:]
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        migrations.MIGRATIONS[:] = before
        try:
            migrations.apply_migrations(SqliteDatabase(conn))
        finally:
            migrations.MIGRATIONS[:] = before + rest
        for statement in sql:
            conn.execute(statement)


def make_batch(
    device_id: str,
    seq: int,
    signals: int = 2,
    outcomes: Sequence[tuple[str, str, OutcomeKind]] = (),
    features: Sequence[float] | None = None,
) -> Batch:
    """A valid uplink batch: `signals` app opens, then one outcome per (campaign, offer, kind),
    each logged with `features` when given."""
    now = utcnow()
    return Batch(
        device_id=device_id,
        seq=seq,
        sent_at=now,
        agent_version="0.1.0",
        model_version=1,
        signals=[
            Signal(id=new_id(), kind="app_open", at=now, attrs={"app": "tv", "category": "games"})
            for _ in range(signals)
        ],
        outcomes=[
            Outcome(
                id=new_id(),
                offer_id=offer_id,
                campaign_id=campaign_id,
                kind=kind,
                at=now,
                surface="tv_home_banner",
                features=list(features) if features is not None else None,
            )
            for campaign_id, offer_id, kind in outcomes
        ],
    )
