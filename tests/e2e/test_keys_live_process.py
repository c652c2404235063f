"""Key rotation against a running `edgemart gateway run` process (issue 14): `edgemart keys
add`, `activate` and `retire`, each its own process, change what the same gateway process
publishes and signs with, with no restart. What devices see is read off the broker: the
retained key list and the freshness timestamp (signed by the key in use)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from protocol import codec
from simulators.brokers import MosquittoProcess, free_port
from tests.support.processes import start_gateway, stop, tail

pytestmark = pytest.mark.integration


def keys_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edgemart", "keys", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_a_running_gateway_process_switches_keys_with_no_restart(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    data, root = tmp_path / "gw", tmp_path / "operator" / "root.key"
    root.parent.mkdir()
    topic_root = f"k{uuid.uuid4().hex[:8]}/v1"
    keys_cli("init", "--data-dir", str(data), "--root", str(root), "--topic-root", topic_root)
    log = tmp_path / "gateway.log"
    proc = await start_gateway(mosquitto.url, data, free_port(), log, "--topic-root", topic_root)
    seen: dict[str, dict[str, Any]] = {}
    try:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.subscribe(f"{topic_root}/keys", qos=1)
            await client.subscribe(f"{topic_root}/timestamp", qos=1)

            async def listen() -> None:
                async for message in client.messages:
                    if isinstance(message.payload, bytes) and message.payload:
                        seen[str(message.topic).rsplit("/", 1)[1]] = codec.decode_object(
                            message.payload
                        )

            listener = asyncio.create_task(listen())

            async def until(check: Any, what: str) -> None:
                for _ in range(200):
                    if check():
                        return
                    assert proc.poll() is None, tail(log)
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{what}; seen {json.dumps(seen)[:600]}\n{tail(log)}")

            await until(lambda: seen.get("keys", {}).get("version") == 1, "list v1")
            first = seen["timestamp"]["kid"]
            new = keys_cli("add", "--data-dir", str(data), "--root", str(root))
            await until(lambda: seen["keys"]["version"] == 2, "list v2 (announced)")
            assert new in {k["kid"] for k in seen["keys"]["keys"]}
            assert seen["timestamp"]["kid"] == first  # announced, not used yet
            keys_cli("activate", "--data-dir", str(data), new)
            await until(lambda: seen["timestamp"]["kid"] == new, "a timestamp signed by new")
            keys_cli("retire", "--data-dir", str(data), "--root", str(root), first)
            await until(lambda: seen["keys"]["version"] == 3, "list v3 (retired)")
            assert {k["kid"] for k in seen["keys"]["keys"]} == {new}
            listener.cancel()
        assert proc.poll() is None  # the same process throughout
        assert "keys reloaded" in tail(log, 100_000)
    finally:
        assert stop(proc) == 0, tail(log)
