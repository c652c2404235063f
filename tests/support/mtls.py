"""A real Mosquitto speaking mutual TLS for provisioned devices (`simulators.brokers.
mtls_config`): devices on `url` with X.509 client certificates from the gateway's fleet CA
(CRL checked), the gateway on `gateway_url` with a password. Mosquitto writes its pid to
`workdir/mosquitto.pid` (for SIGHUP reloads); the broker reads its CRL from
`workdir/crl.pem`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from agent.provisioning.flow import identity_files
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.backend import Session
from cloud_gateway.db.open import open_session
from cloud_gateway.provisioning import ca as fleet_ca
from daemonkit.files import write_durable
from protocol.ids import new_id
from simulators.brokers import MosquittoProcess, free_port, mtls_config

T = TypeVar("T")
ROOT = "edgemart/v1"
"""The topic root the broker's ACL is written for."""


@dataclass
class MtlsFleet:
    """The broker (devices on `url`, mutual TLS; the gateway on `gateway_url`) and the
    gateway's data directory holding the fleet CA."""

    broker: MosquittoProcess
    gw_dir: Path
    gateway_url: str
    gateway_password: str

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.broker.port}"

    def store(self, work: Callable[[Session], T]) -> T:
        session = open_session(self.gw_dir, None)
        try:
            return work(session)
        finally:
            session.close()

    def gateway_settings(self, **overrides: object) -> GatewaySettings:
        """A gateway in this process on the broker's gateway listener."""
        fields: dict[str, object] = {
            "broker": self.gateway_url,
            "data_dir": self.gw_dir,
            "http_port": 0,
            "ack_delay_ms": 2,
            "mqtt_username": "gateway",
            "mqtt_password": SecretStr(self.gateway_password),
        }
        return GatewaySettings.model_validate({**fields, **overrides})

    def issue_identity(self, data_dir: Path, device_id: str) -> None:
        """What provisioning leaves in a device's data dir (`DATA_DIR/identity/`), made here
        directly by the fleet CA (blocking)."""
        ca = fleet_ca.load_or_create(self.gw_dir)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue(device_id, key.public_key())
        cert_path, key_path, ca_path = identity_files(data_dir)
        cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_durable(key_path, key_pem, mode=0o600)
        write_durable(ca_path, ca.cert_pem.encode())
        write_durable(cert_path, cert.public_bytes(serialization.Encoding.PEM))


@contextmanager
def mtls_fleet(tmp_path: Path) -> Iterator[MtlsFleet]:
    """A started mutual-TLS Mosquitto and the fleet CA in `tmp_path/gw`; stopped on leaving."""
    gw_dir = tmp_path / "gw"
    ca = fleet_ca.load_or_create(gw_dir)
    cert, key = ca.issue_server("127.0.0.1")
    work = tmp_path / "mosquitto"
    work.mkdir()
    (work / "server.pem").write_bytes(cert)
    (work / "server.key").write_bytes(key)
    (work / "crl.pem").write_bytes(ca.crl_path.read_bytes())  # the broker's copy
    device_port, gateway_port = free_port(), free_port()
    tls = {
        "cafile": ca.folder / "ca.pem",
        "certfile": work / "server.pem",
        "keyfile": work / "server.key",
        "crlfile": work / "crl.pem",
    }
    password = "gw-" + new_id()
    config = mtls_config(
        work,
        device_port=device_port,
        gateway_port=gateway_port,
        tls=tls,
        gateway_password=password,
        root=ROOT,
    )
    broker = MosquittoProcess(str(work), port=device_port, config=config, tls=True)
    broker.start()
    try:
        yield MtlsFleet(broker, gw_dir, f"mqtt://127.0.0.1:{gateway_port}", password)
    finally:
        broker.stop()
