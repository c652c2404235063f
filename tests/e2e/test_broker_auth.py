"""A device talks only as itself (DESIGN.md guarantee 6): the shipped Mosquitto config with
per-device passwords and the ACL, the REAL gateway and agent processes authenticating with
their own credentials (file, environment), TLS with a CA file, secrets kept out of logs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import ipaddress
import logging
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.api.owners import admin_headers
from agent.config import load_settings
from agent.errors import ConfigError
from agent.runtime.agent import Agent
from cloud_gateway.config import GatewaySettings, mqtt_credentials
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import Batch, Signal
from protocol.ids import new_id, utcnow
from simulators.brokers import MosquittoProcess, free_port
from tests.support.processes import EDGEMART, spawn, start_gateway, stop, wait_healthy
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ("tv-auth-0001", "tv-auth-0002")


@dataclass
class SecuredBroker:
    broker: MosquittoProcess
    passwords: dict[str, str]
    ca_file: Path | None = None


def deploy_config(port: int, workdir: Path, passwd: Path, tls: dict[str, Path] | None) -> str:
    """deploy/mosquitto.conf as shipped, with its paths moved into `workdir` and `port`."""
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    listener = f"listener {port} 127.0.0.1"
    if tls is not None:
        listener += "".join(f"\n{key} {path}" for key, path in tls.items())
    conf = (
        conf.replace("/etc/mosquitto/edgemart.passwd", str(passwd))
        .replace("/etc/mosquitto/edgemart.acl", str(ROOT / "deploy" / "edgemart.acl"))
        .replace("listener 1883", listener)
        .replace("/var/lib/mosquitto/", f"{workdir}/")
        .replace("log_dest syslog", f"log_dest file {workdir}/mosquitto.log")
    )
    # Started as root, Mosquitto drops to its own user, which could not read tmp paths.
    return f"user {getpass.getuser()}\n{conf}"


def _make_passwords(path: Path) -> dict[str, str]:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        pytest.fail("mosquitto_passwd missing: the test command installs mosquitto")
    passwords = {user: secrets.token_urlsafe(16) for user in ("gateway", *DEVICES)}
    for user, secret in passwords.items():
        create = ["-c"] if not path.exists() else []
        subprocess.run([tool, "-b", *create, str(path), user, secret], check=True)
    return passwords


def _tls_files(workdir: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgemart test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "cafile": workdir / "ca.pem",
        "certfile": workdir / "server.pem",
        "keyfile": workdir / "server.key",
    }
    files["cafile"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["certfile"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["keyfile"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _secured(tmp_path: Path, *, tls: bool) -> Iterator[SecuredBroker]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    passwords = _make_passwords(workdir / "passwd")
    files = _tls_files(workdir) if tls else None
    port = free_port()
    broker = MosquittoProcess(
        str(workdir),
        port,
        config=deploy_config(port, workdir, workdir / "passwd", files),
        tls=tls,
    )
    broker.start()
    yield SecuredBroker(broker, passwords, files["cafile"] if files else None)
    broker.kill()


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[SecuredBroker]:
    """Mosquitto running deploy/mosquitto.conf: no anonymous clients, passwords, the ACL."""
    yield from _secured(tmp_path, tls=False)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[SecuredBroker]:
    """The same, its listener speaking TLS with a certificate from a throw-away CA."""
    yield from _secured(tmp_path, tls=True)


# ---------------------------------------------------------------- configuration, no network


def test_credentials_come_from_files_env_or_url_and_stay_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret-file\n")
    args: dict[str, Any] = {
        "profile": "tv",
        "device_id": "tv-cred-0001",
        "data_dir": tmp_path,
        "trust": tmp_path / "trust.json",
    }
    s = load_settings(broker="mqtt://h:1", overrides={"mqtt_password_file": str(pw)}, **args)
    assert s.mqtt_username == "tv-cred-0001"  # the device id: the ACL's %u
    assert s.mqtt_password is not None and s.mqtt_password.get_secret_value() == "s3cret-file"
    assert "s3cret" not in repr(s) and not s.mqtt_tls
    s = load_settings(broker="mqtts://h", environ={"EDGEMART_MQTT_PASSWORD": "s3cret-env"}, **args)
    assert (s.broker_port, s.mqtt_tls) == (8883, True)
    assert s.mqtt_password is not None and s.mqtt_password.get_secret_value() == "s3cret-env"
    with caplog.at_level(logging.WARNING):
        s = load_settings(broker="mqtt://me:s3cret-url@h:1", environ={}, **args)
    assert (s.mqtt_username, s.broker_host) == ("me", "h")
    assert "process list" in caplog.text and "s3cret-url" not in caplog.text
    with pytest.raises(ConfigError, match="mqtt_password"):
        load_settings(broker="mqtt://h", overrides={"agent": {"mqtt_password": "x"}}, **args)
    # an option beats the environment, which beats the config file
    conf = tmp_path / "agent.toml"
    conf.write_text('[agent]\nmqtt_username = "from-file"\nmqtt_tls = true\n')
    env = {"EDGEMART_MQTT_USERNAME": "from-env", "EDGEMART_MQTT_PASSWORD": "p"}
    s = load_settings(broker="mqtt://h", config_file=conf, environ=env, **args)
    assert (s.mqtt_username, s.mqtt_tls) == ("from-env", True)
    s = load_settings(
        broker="mqtt://h",
        config_file=conf,
        environ=env,
        overrides={"mqtt_username": "from-option"},
        **args,
    )
    assert s.mqtt_username == "from-option"
    with pytest.raises(ConfigError, match="mqtt_password_file"):
        load_settings(broker="mqtt://h", overrides={"mqtt_password_file": "/nope"}, **args)

    gw = GatewaySettings(broker="mqtts://gateway:s3cret-url@h", data_dir=tmp_path)
    assert gw.broker == "mqtts://h:8883" and gw.broker_tls and gw.mqtt_username == "gateway"
    assert gw.mqtt_password is not None and "s3cret" not in repr(gw)
    creds = mqtt_credentials(None, None, None, {"EDGEMART_MQTT_PASSWORD_FILE": str(pw)})
    assert creds["mqtt_password"].get_secret_value() == "s3cret-file"


# ---------------------------------------------------------------- real processes, real broker


def _batch(device_id: str, signal_id: str) -> bytes:
    now = utcnow()
    return codec.encode(
        Batch(
            device_id=device_id,
            seq=1,
            sent_at=now,
            agent_version="0.1.0",
            signals=[Signal(id=signal_id, kind="app_open", at=now, attrs={"app": "x"})],
        )
    )


@pytest.mark.integration
async def test_processes_authenticate_and_the_acl_confines_devices(
    tmp_path: Path, secured_broker: SecuredBroker
) -> None:
    broker, passwords = secured_broker.broker, secured_broker.passwords
    device, intruder = DEVICES
    gw_dir, gw_port, api_port = tmp_path / "gw", free_port(), free_port()
    (tmp_path / "gw.pw").write_text(passwords["gateway"] + "\n")
    (tmp_path / "gw.pw").chmod(0o600)
    gw_log, agent_log = tmp_path / "gateway.log", tmp_path / "agent.log"

    with pytest.raises(aiomqtt.MqttError):  # the shipped config admits no anonymous client
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="anonymous"):
            pass

    gateway = await start_gateway(
        broker.url,
        gw_dir,
        gw_port,
        gw_log,
        *("--mqtt-username", "gateway", "--mqtt-password-file", str(tmp_path / "gw.pw"), "-vv"),
    )
    agent = None
    gw = f"http://127.0.0.1:{gw_port}"
    dev = f"http://127.0.0.1:{api_port}"
    try:
        async with aiohttp.ClientSession() as http:
            agent = spawn(
                [
                    *("agent", "run", "--profile", "tv", "--device-id", device),
                    *("--broker", broker.url, "--data-dir", str(tmp_path / "dev")),
                    *("--api-port", str(api_port), "--trust", str(gw_dir / "trust.json"), "-vv"),
                ],
                agent_log,
                # the username defaults to the device id; the password from the environment
                env={"EDGEMART_MQTT_PASSWORD": passwords[device], "EDGEMART_UPLINK__MODE": "raw"},
            )
            await wait_healthy(f"{dev}/healthz", agent, agent_log)
            dev_auth = await asyncio.to_thread(admin_headers, tmp_path / "dev")
            token = await asyncio.to_thread(create_token, gw_dir)
            auth = {"Authorization": f"Bearer {token}"}
            consent = {"purposes": {"analytics": True, "personalization": True, "marketing": True}}
            async with http.put(f"{dev}/v1/consent", json=consent, headers=dev_auth) as r:
                assert r.status == 200, await r.text()
            body = {"signals": [{"kind": "app_open", "attrs": {"app": "tv"}} for _ in range(20)]}
            async with http.post(f"{dev}/v1/signals", json=body, headers=dev_auth) as r:
                assert r.status == 202, await r.text()

            async def stored(device_id: str, n: int) -> bool:
                async with http.get(f"{gw}/v1/devices/{device_id}", headers=auth) as r:
                    return r.status == 200 and (await r.json())["signals_stored"] == n

            async def acked() -> bool:
                async with http.get(f"{dev}/v1/status", headers=dev_auth) as r:
                    status = await r.json()
                    return (status["link"], status["outbox_depth"]) == ("connected", 0)

            await eventually(lambda: stored(device, 20))
            await eventually(acked)

            # Another device, with its own valid credentials, poses as this one: refused.
            forged = new_id()
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                identifier=intruder,
                username=intruder,
                password=passwords[intruder],
            ) as other:
                # it may subscribe to the other's downlink, but the ACL delivers it nothing
                await other.subscribe(f"edgemart/v1/dev/{device}/down/#", qos=1)
                await other.publish(
                    f"edgemart/v1/dev/{device}/up/batch", _batch(device, forged), qos=1
                )
                await other.publish(
                    f"edgemart/v1/dev/{intruder}/up/batch", _batch(intruder, new_id()), qos=1
                )
                async with http.post(f"{dev}/v1/signals", json=body, headers=dev_auth) as r:
                    assert r.status == 202, await r.text()
                await eventually(lambda: stored(device, 40))  # acked on its down/ack
                await eventually(acked)
                await eventually(lambda: stored(intruder, 1))  # its own batch went through
                leaked: list[str] = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        async for message in other.messages:
                            leaked.append(message.topic.value)
                assert leaked == []
            async with http.get(f"{gw}/v1/devices/{device}/export", headers=auth) as r:
                export = await r.json()
            assert len(export["signals"]) == 40
            assert forged not in {s["id"] for s in export["signals"]}

            # erasure through the same ACL: forget on its down/cmd, receipt on its up/batch
            async with http.delete(f"{gw}/v1/devices/{device}", headers=auth) as r:
                assert r.status == 202, await r.text()
                assert (await r.json())["removed"]["signals"] == 40

            async def forgotten() -> bool:
                async with http.get(f"{dev}/v1/status", headers=dev_auth) as r:
                    status = await r.json()
                if status["counters"].get("forgets") != 1 or status["outbox_depth"]:
                    return False
                async with http.get(f"{gw}/v1/stats", headers=auth) as r:
                    stats = await r.json()
                return bool(stats["devices_erased"] == stats["device_commands_confirmed"] == 1)

            await eventually(forgotten)
    finally:
        if agent is not None:
            stop(agent)
        stop(gateway)
    logs = gw_log.read_text() + agent_log.read_text()
    assert "link up" in agent_log.read_text(), agent_log.read_text()[-2000:]
    for secret in passwords.values():
        assert secret not in logs


@pytest.mark.integration
async def test_gateway_and_agent_over_tls_with_a_ca_file(
    tmp_path: Path, tls_broker: SecuredBroker
) -> None:
    broker, passwords, ca = tls_broker.broker, tls_broker.passwords, tls_broker.ca_file
    assert ca is not None and broker.url.startswith("mqtts://")
    device = DEVICES[0]
    settings = GatewaySettings(
        broker=broker.url,
        data_dir=tmp_path / "gw",
        http_port=0,
        ack_delay_ms=2,
        **mqtt_credentials("gateway", None, ca, {"EDGEMART_MQTT_PASSWORD": passwords["gateway"]}),
    )
    async with Gateway(settings) as gw:
        assert gw.link_connected
        agent_settings = load_settings(
            profile="tv",
            device_id=device,
            broker=broker.url,
            data_dir=tmp_path / "dev",
            trust=gw.trust_path,
            overrides={"uplink": {"batch_max_age_s": 0.05, "mode": "raw"}},
            environ={"EDGEMART_MQTT_PASSWORD": passwords[device], "EDGEMART_MQTT_CA_FILE": str(ca)},
        )
        async with Agent(agent_settings) as agent:
            assert await agent.wait_connected()
            await agent.set_consent(
                {"analytics": True, "personalization": False, "marketing": False}
            )
            await agent.accept_signals([{"kind": "app_open", "attrs": {"app": "tls"}}])
            assert await agent.drain(10)
        assert gw.counters["signals_stored"] == 1


def test_a_missing_password_file_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-password")
    for args in (
        [
            *("agent", "run", "--profile", "tv", "--device-id", "tv-cli-0001"),
            *("--broker", "mqtt://127.0.0.1:1", "--data-dir", str(tmp_path / "dev")),
            *("--trust", str(tmp_path / "trust.json"), "--mqtt-password-file", missing),
        ],
        [
            *("gateway", "run", "--broker", "mqtt://127.0.0.1:1"),
            *("--data-dir", str(tmp_path / "gw"), "--http-port", "0"),
            *("--mqtt-username", "gateway", "--mqtt-password-file", missing),
        ],
    ):
        proc = subprocess.run(
            [*EDGEMART, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 2, proc.stderr
        assert "mqtt_password_file" in proc.stderr and missing in proc.stderr
        assert "Traceback" not in proc.stderr
