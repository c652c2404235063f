"""deploy/: the one-node Mosquitto config loads, and its ACL confines a device to its topics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from simulators.brokers import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[int]:
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(passwd).exists():
        pytest.fail("mosquitto_passwd missing: the test command installs mosquitto")
    pw = tmp_path / "passwd"
    for user, secret in (
        ("gateway", "gw-secret"),
        ("tv-0001", "tv-secret"),
        ("tv-0002", "other-secret"),
    ):
        subprocess.run(
            [passwd, "-b", *(["-c"] if not pw.exists() else []), str(pw), user, secret],
            check=True,
            capture_output=True,
        )
    port = free_port()
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    conf = (
        conf.replace("/etc/mosquitto/edgemart.passwd", str(pw))
        .replace("/etc/mosquitto/edgemart.acl", str(ROOT / "deploy" / "edgemart.acl"))
        .replace("listener 1883", f"listener {port} 127.0.0.1")
        .replace("/var/lib/mosquitto/", f"{tmp_path}/")
        .replace("log_dest syslog", "log_dest none")
    )
    # Started as root, Mosquitto drops to its own user, which could not read tmp_path.
    (tmp_path / "m.conf").write_text(f"user {getpass.getuser()}\n" + conf)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "m.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mosquitto refused deploy/mosquitto.conf"
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        time.sleep(0.05)
    yield port
    proc.kill()
    proc.wait()


async def test_acl_confines_devices_to_their_own_topics(acl_broker: int) -> None:
    port = acl_broker
    async with (
        aiomqtt.Client(
            "127.0.0.1", port, identifier="gw", username="gateway", password="gw-secret"
        ) as gw,
        aiomqtt.Client(
            "127.0.0.1", port, identifier="tv-0001", username="tv-0001", password="tv-secret"
        ) as tv,
    ):
        await gw.subscribe("edgemart/v1/dev/+/up/#", qos=1)
        await tv.subscribe("edgemart/v1/dev/tv-0002/down/#", qos=1)  # not its own: denied
        await tv.publish("edgemart/v1/dev/tv-0002/up/batch", b'{"v":1,"spoof":true}', qos=1)
        await tv.publish("edgemart/v1/dev/tv-0001/up/batch", b'{"v":1,"own":true}', qos=1)
        await gw.publish("edgemart/v1/dev/tv-0002/down/ack", b'{"v":1,"acks":[1]}', qos=1)
        received = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                async for message in gw.messages:
                    received.append(str(message.topic))
        assert received == ["edgemart/v1/dev/tv-0001/up/batch"]
        leaked = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for message in tv.messages:
                    leaked.append(str(message.topic))
        assert leaked == []


async def test_wrong_password_is_refused(acl_broker: int) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", acl_broker, identifier="tv-0001", username="tv-0001", password="wrong"
        ):
            pass


def test_the_cluster_compose_file_runs_gateway_commands_the_cli_accepts() -> None:
    """deploy/cluster/compose.yaml cannot run here (no Docker engine); what can be checked is
    that it parses and that every gateway worker's command is one `edgemart` accepts, on
    PostgreSQL and the shared group, so the file does not drift from the CLI."""
    import yaml  # noqa: PLC0415  # PyYAML comes with the dev extras' tools

    from cloud_gateway.cli import register  # noqa: PLC0415

    compose = yaml.safe_load((ROOT / "deploy" / "cluster" / "compose.yaml").read_text())
    workers = {name: svc for name, svc in compose["services"].items() if "gateway" in name}
    assert len(workers) == 3
    parser = argparse.ArgumentParser(prog="edgemart")
    register(parser.add_subparsers(dest="area", required=True))
    for name, service in workers.items():
        args = parser.parse_args(service["command"])
        assert args.db.startswith("postgresql://"), name
        assert args.shared_group == "gateway", name
        assert service["stop_signal"] == "SIGTERM", name


UNIT = ROOT / "deploy" / "edgemart-agent.service"


def _unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def _mb(value: str) -> int:
    assert value.endswith("M"), value
    return int(value[:-1])


def test_the_agent_unit_verifies_and_runs_the_command_where_pip_puts_it(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit, its ExecStart pointed at this install's
    `edgemart` (the shipped path, /opt/edgemart/bin/edgemart, is the venv its header makes)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert "systemd" in (ROOT / "scripts" / "test.sh").read_text()
        pytest.skip("systemd-analyze is missing here; scripts/test.sh installs Debian's systemd")
    text = UNIT.read_text(encoding="utf-8")
    settings = _unit_settings()
    shipped = "/opt/edgemart/bin/edgemart"
    assert settings["ExecStart"].startswith(shipped + " agent run ")
    assert "python3 -m venv /opt/edgemart" in text  # the header says how it gets there
    here = shutil.which("edgemart") or str(Path(sys.executable).parent / "edgemart")
    assert Path(here).exists(), "pip install -e . puts edgemart beside the interpreter"
    unit = tmp_path / "edgemart-agent.service"
    unit.write_text(text.replace(shipped, here), encoding="utf-8")
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "edgemart-agent.service" not in proc.stderr, proc.stderr  # no warning about it


def test_the_agent_unit_is_notify_with_a_watchdog_and_memory_from_the_budgets() -> None:
    settings = _unit_settings()
    assert settings["Type"] == "notify"
    assert int(settings["WatchdogSec"]) > 30  # above the supervisor's longest backoff
    budgets = [
        tomllib.loads(p.read_text())["budgets"]["memory_mb"]
        for p in (ROOT / "firmware_profiles").glob("*.toml")
    ]
    assert _mb(settings["MemoryHigh"]) == max(budgets)  # the hub's budget, 160 MB
    assert _mb(settings["MemoryMax"]) >= 1.2 * max(budgets)  # headroom above it


async def test_the_agent_tells_systemd_it_is_ready_and_feeds_the_watchdog(
    tmp_path: Path,
) -> None:
    from protocol import codec  # noqa: PLC0415
    from protocol.envelopes import TrustFile  # noqa: PLC0415
    from protocol.signing import Signer  # noqa: PLC0415
    from tests.support.processes import spawn, stop, tail  # noqa: PLC0415

    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[Signer.generate("k1").public])))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    log = tmp_path / "agent.log"
    proc = spawn(
        [
            *("agent", "run", "--profile", "tv", "--device-id", "tv-0001"),
            *("--broker", f"mqtt://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d")),
            *("--trust", str(trust), "--api-port", "0"),
        ],
        log,
        env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"},
    )
    try:
        got = [await asyncio.to_thread(notify.recv, 256) for _ in range(4)]
    finally:
        stop(proc)
        notify.close()
    assert got[0].startswith(b"READY=1"), tail(log)
    assert got[1:] == [b"WATCHDOG=1"] * 3, tail(log)
