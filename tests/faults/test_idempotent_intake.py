"""Idempotent intake across a real kill -9: an agent process dies right after the commit of a
keyed `POST /v1/signals` and before its answer leaves (a deterministic crash point,
`tests/support/crash_agent.py`); the app retries with the same key against the restarted
agent and gets the original ids, and the outbox holds each signal once."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp

from agent.api.owners import admin_headers
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.signing import Signer
from simulators.brokers import free_port
from tests.support.processes import spawn, stop, tail, wait_healthy

CRASHING = (sys.executable, "-m", "tests.support.crash_agent")
ROUNDS = 3


def agent_args(data: Path, trust: Path, port: int) -> list[str]:
    return [
        "agent",
        "run",
        "--profile",
        "tv",
        "--device-id",
        "tv-crash-0001",
        "--broker",
        f"mqtt://127.0.0.1:{free_port()}",  # nothing listens: the outbox only fills
        "--data-dir",
        str(data),
        "--api-port",
        str(port),
        "--trust",
        str(trust),
    ]


async def post(
    port: int, body: dict[str, Any], key: str, data: Path
) -> tuple[int, dict[str, Any], bool]:
    """POST /v1/signals with an `Idempotency-Key`, as the admin app of the agent of `data`."""
    headers = {**await asyncio.to_thread(admin_headers, data), "Idempotency-Key": key}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.post(f"http://127.0.0.1:{port}/v1/signals", json=body, headers=headers) as resp,
    ):
        replayed = resp.headers.get("Idempotent-Replayed") == "true"
        return resp.status, await resp.json(), replayed


async def test_a_kill_between_the_commit_and_the_answer_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path,
) -> None:
    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[Signer.generate("k1").public])))
    data, log = tmp_path / "data", tmp_path / "agent.log"
    port = free_port()
    answered: dict[str, list[str]] = {}
    for n in range(ROUNDS):
        body = {"signals": [{"kind": "search", "attrs": {"query_len": n + i}} for i in range(5)]}
        key = f"crash-{n}"
        doomed = spawn(agent_args(data, trust, port), log, command=CRASHING)
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", doomed, log)
        try:
            await post(port, body, key, data)
        except (aiohttp.ClientError, TimeoutError):
            pass  # the answer never came: the process died after the commit
        else:
            raise AssertionError(f"the agent answered before dying:\n{tail(log)}")
        assert doomed.wait(timeout=20) == -9
        agent = spawn(agent_args(data, trust, port), log)
        try:
            await wait_healthy(f"http://127.0.0.1:{port}/healthz", agent, log)
            status, answer, replayed = await post(port, body, key, data)  # the app's retry
            assert status == 202 and replayed, (status, answer)
            assert answer["accepted"] == 5
            answered[key] = answer["ids"]
            changed = {"signals": body["signals"][:1]}
            status, _, _ = await post(port, changed, key, data)
            assert status == 409
        finally:
            assert stop(agent) == 0, tail(log)
    with sqlite3.connect(data / "agent.sqlite3") as db:
        stored = sorted(r[0] for r in db.execute("SELECT id FROM signals"))
    assert stored == sorted(i for ids in answered.values() for i in ids)  # each once
    assert len(stored) == 5 * ROUNDS
