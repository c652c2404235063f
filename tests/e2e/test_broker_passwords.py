"""Password credentials the gateway makes (brokers without mutual TLS): a real Mosquitto
reads the password file `edgemart gateway provision password` writes; a device connects
with the password printed once; revoked, it is refused once the running broker reloaded
(`--broker-pid-file`: SIGHUP)."""

from __future__ import annotations

import asyncio
import getpass
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from cloud_gateway.cli import main as gateway_cli
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.open import open_session
from simulators.brokers import MosquittoProcess, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def _connects(port: int, user: str, password: str) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1", port, username=user, password=password, identifier=f"{user}-probe"
        ):
            return True
    except aiomqtt.MqttError:
        return False


async def _refused(port: int, user: str, password: str) -> bool:
    return not await _connects(port, user, password)


async def test_a_device_password_made_by_the_gateway_works_until_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    await asyncio.to_thread(lambda: open_session(gw_dir, None).close())  # its database
    passwd = tmp_path / "mosquitto" / "edgemart.passwd"
    passwd.parent.mkdir()
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "gateway", "gw-pw"], check=True)
    where = ["--data-dir", str(gw_dir), "--password-file", str(passwd)]
    verb = ["provision", "password", "--device", "tv-pw-0001", *where]
    assert await asyncio.to_thread(gateway_cli, verb) == 0
    password = capsys.readouterr().out.strip()
    assert password not in passwd.read_text()  # only its hash
    port = free_port()
    config = (
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"persistence false\nlog_dest none\npid_file {passwd.parent}/mosquitto.pid\n"
    )
    broker = MosquittoProcess(
        str(passwd.parent), port, config=f"user {getpass.getuser()}\n{config}"
    )
    await asyncio.to_thread(broker.start)
    try:
        assert await _connects(port, "tv-pw-0001", password)
        assert not await _connects(port, "tv-pw-0001", "guess")
        assert await _connects(port, "gateway", "gw-pw")  # the gateway's line is kept
        # the running broker reads the rewritten file on SIGHUP: no restart
        pid_file = ["--broker-pid-file", str(passwd.parent / "mosquitto.pid")]
        assert await asyncio.to_thread(gateway_cli, [*verb, "--revoke", *pid_file]) == 0
        assert "reloaded" in capsys.readouterr().out
        await eventually(lambda: _refused(port, "tv-pw-0001", password), 10)
        assert await _connects(port, "gateway", "gw-pw")
    finally:
        await asyncio.to_thread(broker.stop)

    def actions() -> list[str]:
        store = open_session(gw_dir, None)
        try:
            return [r["action"] for r in audit_log(store)]
        finally:
            store.close()

    assert await asyncio.to_thread(actions) == ["password.revoke", "password.set"]
