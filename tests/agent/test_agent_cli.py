"""`python -m agent.cli run` as a real process: serves /healthz, exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO

import aiomqtt
import pytest

from protocol import codec
from protocol.envelopes import State, TrustFile
from protocol.signing import Signer
from simulators.brokers import MosquittoProcess, free_port
from tests.support.processes import wait_healthy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def _start(
    tmp_path: Path, broker: str, device: str, root: str, *extra: str
) -> subprocess.Popen[bytes]:
    trust = _write_trust(tmp_path, root)
    with (tmp_path / "agent.log").open("wb") as log:
        return _popen(log, broker, device, tmp_path, trust, extra)


def _popen(
    log: IO[bytes], broker: str, device: str, tmp_path: Path, trust: Path, extra: tuple[str, ...]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--profile",
            "tv",
            "--device-id",
            device,
            "--broker",
            broker,
            "--data-dir",
            str(tmp_path / "data"),
            "--trust",
            str(trust),
            *extra,
        ],
        stdout=log,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _write_trust(tmp_path: Path, root: str) -> Path:
    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[Signer.generate("k1").public], topic_root=root)))
    return trust


async def _connected(proc: subprocess.Popen[bytes], port: int, log: Path) -> dict[str, object]:
    """The agent's /healthz body once its link to the broker is up."""
    url = f"http://127.0.0.1:{port}/healthz"
    body: dict[str, object] = await wait_healthy(
        url, proc, log, ready=lambda body: body.get("link") == "connected"
    )
    return body


async def _retained_state(broker: MosquittoProcess, topic: str) -> State:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return codec.decode(message.payload, State)
    raise AssertionError("no retained state")


async def test_cli_run_serves_and_stops_on_sigterm(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    tag = uuid.uuid4().hex[:8]
    device, root, port = f"tv-cli-{tag}", f"cli{tag}/v1", free_port()
    proc = _start(tmp_path, mosquitto.url, device, root, "--api-port", str(port))
    try:
        body = await _connected(proc, port, tmp_path / "agent.log")
        assert body["ok"] is True
        state = await _retained_state(mosquitto, f"{root}/dev/{device}/state")
        assert state.status == "online"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = await _retained_state(mosquitto, f"{root}/dev/{device}/state")
    assert state.status == "offline"


async def test_killed_agent_leaves_its_will(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    device, root, port = f"tv-kill-{tag}", f"kill{tag}/v1", free_port()
    proc = _start(tmp_path, mosquitto.url, device, root, "--api-port", str(port))
    try:
        await _connected(proc, port, tmp_path / "agent.log")
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def offline() -> bool:
        state = await _retained_state(mosquitto, f"{root}/dev/{device}/state")
        return state.status == "offline"

    await eventually(offline, 5.0, "the will: retained state offline", step=0.1)


def test_cli_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    _write_trust(tmp_path, "x/v1")
    bad = tmp_path / "bad.toml"
    bad.write_text('[uplink]\nmax_in_flight = "many"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--profile",
            "tv",
            "--device-id",
            "tv-bad-1",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--data-dir",
            str(tmp_path / "d"),
            "--trust",
            str(tmp_path / "trust.json"),
            "--config",
            str(bad),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    err = result.stderr.decode().strip()
    assert len(err.splitlines()) == 1
    assert "uplink.max_in_flight" in err
    assert str(bad) in err
