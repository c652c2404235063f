"""A household on loopback for a bench's agent process: what a device in a home runs with.

`household(...)` issues the memberships through the run's gateway (`POST
/v1/households/{id}/members`, as provisioning or the owner's app does), launches the sample
campaigns on the agent's surfaces (so it has offers to decide), and starts a hub agent process
that coordinates the home on the loopback LAN (found by mDNS, paired by the signed
handshake). The measured agent then joins it with `EDGEMART_AGENT__LAN_HOST=127.0.0.1`: a thin
speaker asks the hub to rank for it, a full agent shares its context, as in a home.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.household.membership import load_key, write_membership
from cloud_gateway.security.auth import create_token
from simulators.demo import sample_campaigns
from simulators.household_lan import ROLE_OF_PROFILE
from simulators.world import make_world

HOUSEHOLD = "hh-bench-rss"
HUB = "hub-bench-rss"
READY_S = 60.0
NO_BROKER = "mqtt://127.0.0.1:9"
"""A hub that only coordinates the LAN: it never reaches a broker (the discard port)."""
LAN_ENV = {"EDGEMART_AGENT__LAN_HOST": "127.0.0.1"}
"""What puts an agent process on the loopback LAN (with a membership in its data dir)."""


class _Gateway:
    def __init__(self, port: int, data_dir: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        _wait_http(self.base + "/healthz", READY_S)
        self.token = create_token(data_dir)

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read() or b"null")


def _wait_http(url: str, seconds: float) -> None:
    """Until `url` answers at all (the gateway writes its trust file before it listens)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read()
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _member(gateway: _Gateway, data_dir: Path, device_id: str, role: str) -> None:
    """The device's LAN key made in its data dir, its membership issued and written there."""
    key = load_key(data_dir)
    body = {"device_id": device_id, "device_key": key.public.public_key, "roles": [role]}
    wire = gateway.call("POST", f"/v1/households/{HOUSEHOLD}/members", body)
    write_membership(data_dir, wire)


def start_hub(
    data_dir: Path,
    trust: Path,
    *,
    device_id: str = HUB,
    broker: str = NO_BROKER,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """`edgemart agent run --profile hub` on the loopback LAN (a membership grant in
    `data_dir`), connected to `broker` (default: none it could reach); returns once it is up."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "edgemart", "agent", "run", "--profile", "hub"),
            *("--device-id", device_id, "--broker", broker, "--data-dir", str(data_dir)),
            *("--trust", str(trust), "--api-port", "none"),
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("wb") if log is not None else None,
        text=True,
        env={**os.environ, **LAN_ENV, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise RuntimeError(f"the hub agent did not start: {line!r} (log: {log})")
    return proc


@contextlib.contextmanager
def household(
    tmp: Path,
    *,
    gateway_port: int,
    broker: str,
    trust: Path,
    agent_dir: Path,
    device_id: str,
    profile: str,
    surfaces: list[str],
) -> Iterator[dict[str, str]]:
    """The measured agent's membership written into `agent_dir`, the campaigns launched, the hub
    running; yields the environment that puts the agent on the LAN."""
    gateway = _Gateway(gateway_port, tmp / "gw")
    _member(gateway, agent_dir, device_id, ROLE_OF_PROFILE.get(profile, "member"))
    _member(gateway, tmp / "hub", HUB, "hub")
    for campaign in sample_campaigns(make_world(5, households=2, offers=24), surfaces):
        created = gateway.call("POST", "/v1/campaigns", campaign)
        gateway.call("POST", f"/v1/campaigns/{created['id']}/launch")
    hub = start_hub(
        tmp / "hub",
        trust,
        broker=broker,
        log=tmp / "hub.log",
        env={"EDGEMART_CONSENT__PERSONALIZATION": "true"},
    )
    try:
        yield dict(LAN_ENV)
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=20)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
