"""deploy/: the one-node Mosquitto config loads, and its ACL confines a device to its topics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
import time
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
