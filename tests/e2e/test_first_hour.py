"""A new user's first hour with the real commands: start-up checks that fail in one line
before any side effect, ready lines with the actual ports, and the broker link's outages
told while they last."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from protocol import codec
from protocol.envelopes import TrustFile
from protocol.signing import Signer
from simulators.brokers import MosquittoProcess, free_port
from tests.support.processes import EDGEMART, spawn, stop, tail
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process holds (listening), as a second daemon on it would find it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _trust(tmp_path: Path) -> Path:
    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[Signer.generate("k1").public])))
    return trust


def _run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEMART, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


async def _published_during(broker: MosquittoProcess, action: asyncio.Future[Any]) -> list[str]:
    """The topics anything published on `broker` (retained ones included) while `action` ran."""
    seen: list[str] = []
    async with aiomqtt.Client("127.0.0.1", broker.port) as spy:
        await spy.subscribe("#", qos=1)

        async def collect() -> None:
            async for message in spy.messages:
                seen.append(str(message.topic))

        collecting = asyncio.create_task(collect())
        try:
            await action
            await asyncio.sleep(0.5)
        finally:
            collecting.cancel()
    return seen


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


async def test_a_busy_api_port_is_one_line_and_nothing_published_or_created(
    tmp_path: Path, own_mosquitto: MosquittoProcess, held_port: int
) -> None:
    data = tmp_path / "data"
    run = asyncio.to_thread(
        _run,
        *("agent", "run", "--profile", "tv", "--device-id", "tv-0001"),
        *("--broker", own_mosquitto.url, "--data-dir", str(data)),
        *("--trust", str(_trust(tmp_path)), "--api-port", str(held_port)),
    )
    task = asyncio.ensure_future(run)
    seen = await _published_during(own_mosquitto, task)
    proc = task.result()
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert f"--api-port {held_port}" in line and "in use" in line
    assert seen == []  # no birth, no phantom device
    assert not data.exists()


async def test_a_busy_http_port_is_one_line_and_the_key_list_is_left_alone(
    tmp_path: Path, own_mosquitto: MosquittoProcess, held_port: int
) -> None:
    data = tmp_path / "gateway"
    task = asyncio.ensure_future(
        asyncio.to_thread(
            _run,
            *("gateway", "run", "--broker", own_mosquitto.url, "--data-dir", str(data)),
            *("--http-port", str(held_port)),
        )
    )
    seen = await _published_during(own_mosquitto, task)
    proc = task.result()
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert f"--http-port {held_port}" in line and "in use" in line
    assert seen == []  # no retained key list replaced, no catalog
    assert not data.exists()


def test_a_token_for_a_dir_without_a_gateway_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-gateway"
    proc = _run("gateway", "token", "create", "--data-dir", str(empty))
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert f"--data-dir {empty}" in line and "no gateway" in line
    assert proc.stdout == ""  # no token printed
    assert not empty.exists()


def test_a_demo_on_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "demo"
    proc = _run("demo", "--broker", f"mqtt://127.0.0.1:{port}", "--data-dir", str(data), timeout=20)
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert f"--broker mqtt://127.0.0.1:{port}" in line and "refused" in line.lower()
    assert not data.exists()


async def test_the_agent_says_it_is_ready_and_tells_the_outage_and_its_end(
    tmp_path: Path,
) -> None:
    """Started before its broker: a ready line with the port `--api-port 0` chose, a warning
    while the broker cannot be reached, and a line when the link is back."""
    port = free_port()
    log = tmp_path / "agent.log"
    proc = spawn(
        [
            *("agent", "run", "--profile", "tv", "--device-id", "tv-0001"),
            *("--broker", f"mqtt://127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")),
            *("--trust", str(_trust(tmp_path)), "--api-port", "0"),
        ],
        log,
    )
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), port=port)
    try:

        def ready_line() -> re.Match[str] | None:
            assert proc.poll() is None, tail(log)
            return re.search(r"agent tv-0001 ready: local API http://127.0.0.1:(\d+)", tail(log))

        found = await eventually(ready_line, 20.0, "the ready line")
        api = int(found.group(1))
        assert api != 0
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{api}/healthz") as resp,
        ):
            assert resp.status == 200
        await eventually(
            lambda: "WARNING" in tail(log) and "cannot reach the broker" in tail(log),
            20.0,
            "a warning about the broker",
        )
        await asyncio.to_thread(broker.start)
        await eventually(lambda: "link back to" in tail(log), 40.0, "the link is back")
    finally:
        stop(proc)
        broker.stop()
    assert tail(log, 100_000).count("cannot reach the broker") == 1  # not one per retry


async def test_the_gateway_says_it_is_ready_and_tells_the_outage_and_its_end(
    tmp_path: Path,
) -> None:
    """`--http-port 0`: the ready line names the port it bound; started before its broker, it
    warns once that the broker cannot be reached and says when the link is back."""
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = spawn(
        [
            *("gateway", "run", "--broker", f"mqtt://127.0.0.1:{port}"),
            *("--data-dir", str(tmp_path / "gw"), "--http-port", "0"),
        ],
        log,
    )
    broker = MosquittoProcess(str(tmp_path / "mosquitto"), port=port)
    try:

        def ready_line() -> re.Match[str] | None:
            assert proc.poll() is None, tail(log)
            return re.search(r"gateway ready on http://127.0.0.1:(\d+)", tail(log))

        found = await eventually(ready_line, 30.0, "the ready line")
        assert f"broker mqtt://127.0.0.1:{port} (connecting), topic root edgemart/v1" in tail(log)
        http_port = int(found.group(1))
        assert http_port != 0
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{http_port}/healthz") as resp,
        ):
            assert resp.status == 200
        assert "cannot reach the broker" in tail(log)
        await asyncio.to_thread(broker.start)
        await eventually(lambda: "link back to" in tail(log), 40.0, "the link is back")
    finally:
        stop(proc)
        broker.stop()
    assert tail(log, 100_000).count("cannot reach the broker") == 1
