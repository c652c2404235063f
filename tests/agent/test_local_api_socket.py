"""The local API on a Unix socket (issue 14 item 4): callers without a token are known by the
kernel's peer credentials (SO_PEERCRED). Root and the agent's own user are admin; another
user acts as the app bound to its uid (`edgemart agent token bind`), with that app's scopes,
or gets 401. A real socket; the other user is a real process running as `nobody`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from agent.api.local import LocalApi
from agent.api.owners import audit_log, create_token
from agent.cli import main as agent_cli
from agent.errors import ConfigError
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.signing import Signer
from simulators.brokers import MosquittoProcess
from tests.support.builders import ALL
from tests.support.local_device import Device
from tests.support.processes import spawn, stop, tail
from tests.support.waiting import eventually

NOBODY = 65534
"""`nobody`, and `nogroup` its group, on Debian."""
REQUEST = """\
import socket, sys
path, method, route, body = sys.argv[1:5]
data = body.encode()
head = (f"{method} {route} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n"
        f"Content-Type: application/json\\r\\nContent-Length: {len(data)}\\r\\n\\r\\n")
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(head.encode() + data)
answer = b""
while chunk := s.recv(65536):
    answer += chunk
print(answer.split(b" ", 2)[1].decode())
"""
"""An HTTP request over the socket with the standard library only (run as another user)."""


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's tmp_path is 0700): only the socket's mode
    decides who connects."""
    folder = Path(tempfile.mkdtemp(prefix="edgemart-sock-"))
    folder.chmod(0o755)
    yield folder
    for leftover in folder.iterdir():
        leftover.unlink()
    folder.rmdir()


@pytest.fixture
async def served(device: Device, socket_dir: Path) -> AsyncIterator[Path]:
    path = socket_dir / "agent.sock"
    api = LocalApi(device.agent, None, path, str(NOBODY))
    assert await api.start() is None  # the socket only: no TCP port
    yield path
    await api.stop()
    assert not path.exists()


async def _call(path: Path, method: str, route: str, body: object = None) -> int:
    """As this process's user (root here, or the agent's own user): no token sent."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as http,
        http.request(method, f"http://localhost{route}", json=body) as resp,
    ):
        return resp.status


async def test_the_agents_own_user_is_admin_on_the_socket_with_no_token(
    device: Device, served: Path
) -> None:
    assert stat.S_ISSOCK(served.stat().st_mode)
    assert stat.S_IMODE(served.stat().st_mode) == 0o660
    assert served.stat().st_gid == NOBODY  # --api-socket-group
    assert await _call(served, "GET", "/v1/status") == 200
    assert await _call(served, "PUT", "/v1/consent", {"purposes": ALL}) == 200
    assert device.agent.counters["api_unauthorized"] == 0


async def test_a_stale_socket_is_replaced_and_any_other_file_is_refused(
    device: Device, socket_dir: Path
) -> None:
    path = socket_dir / "agent.sock"
    with socket.socket(socket.AF_UNIX) as leftover:  # what a killed agent leaves
        leftover.bind(str(path))
    assert stat.S_ISSOCK(path.lstat().st_mode)
    again = LocalApi(device.agent, None, path)
    await again.start()
    assert await _call(path, "GET", "/v1/status") == 200
    await again.stop()
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        await LocalApi(device.agent, None, path).start()
    assert path.read_text() == "not a socket"  # left alone


def _as_nobody(path: Path, method: str, route: str, body: str = "") -> int:
    done = subprocess.run(
        ["/usr/bin/python3", "-c", REQUEST, str(path), method, route, body],
        user=NOBODY,
        group=NOBODY,
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    return int(done.stdout.strip())


@pytest.mark.integration
async def test_another_user_acts_only_as_the_app_bound_to_its_uid(
    device: Device, served: Path
) -> None:
    if os.getuid() != 0:
        pytest.fail("needs root to run a process as nobody (the test image runs as root)")
    data_dir = device.agent.settings.data_dir
    call = asyncio.to_thread
    signal = '{"signals": [{"kind": "search", "attrs": {"category": "groceries"}}]}'
    consent = json.dumps({"purposes": ALL})
    assert await call(_as_nobody, served, "GET", "/v1/status") == 401  # bound to nothing
    assert device.agent.counters["api_unauthorized"] == 1
    await call(create_token, data_dir, "launcher", "signals,offers")
    assert agent_cli(["token", "bind", "--data-dir", str(data_dir), "--app", "launcher",
                      "--uid", str(NOBODY)]) == 0  # fmt: skip
    assert await call(_as_nobody, served, "POST", "/v1/signals", signal) not in {401, 403}
    assert await call(_as_nobody, served, "PUT", "/v1/consent", consent) == 403  # not its scope
    assert await call(_as_nobody, served, "GET", "/v1/status") == 403
    log = await call(audit_log, data_dir)
    assert [e["uid"] for e in log if e["action"] == "token.bind_uid"] == [NOBODY]
    assert agent_cli(["token", "bind", "--data-dir", str(data_dir), "--uid", str(NOBODY),
                      "--remove"]) == 0  # fmt: skip

    async def refused() -> bool:
        return await call(_as_nobody, served, "POST", "/v1/signals", signal) == 401

    await eventually(refused, 5, "the unbound uid refused")


@pytest.mark.integration
async def test_edgemart_agent_run_serves_its_api_on_the_socket_only(
    tmp_path: Path, socket_dir: Path, mosquitto: MosquittoProcess
) -> None:
    """`--api-port none --api-socket PATH`: the daemon serves the socket and no TCP port."""
    trust = tmp_path / "trust.json"
    signer = Signer.generate("k1")
    trust.write_bytes(codec.encode(TrustFile(keys=[signer.public], topic_root="sock/v1")))
    path, log = socket_dir / "agent.sock", tmp_path / "agent.log"
    agent = spawn(
        [
            *("agent", "run", "--profile", "tv", "--device-id", "tv-sock-0001"),
            *("--broker", mosquitto.url, "--data-dir", str(tmp_path / "dev")),
            *("--trust", str(trust), "--api-port", "none", "--api-socket", str(path)),
        ],
        log,
    )
    try:

        async def ready() -> bool:
            assert agent.poll() is None, tail(log)
            return f"local API off and unix:{path}" in tail(log)

        await eventually(ready, 30, "the agent's ready line")
        assert await _call(path, "GET", "/v1/status") == 200
    finally:
        assert stop(agent) == 0, tail(log)
    assert not path.exists()  # removed on a clean stop
