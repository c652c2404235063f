"""Options to client: broker, identity, credentials, TLS, session flags, will -> aiomqtt.Client.

The one place both daemons' MQTT clients are made, and where a broker password file is
read (the same rules for agent and gateway: UTF-8, one line, at most 4 KiB).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttlink.errors import CredentialError
from mqttlink.logs import quiet_late_acks

log = logging.getLogger(__name__)
quiet_late_acks(aiomqtt.client.MQTT_LOGGER)

MAX_SECRET_BYTES = 4096
CREDENTIAL_ENV = {
    "EDGEMART_MQTT_USERNAME": "mqtt_username",
    "EDGEMART_MQTT_PASSWORD": "mqtt_password",
    "EDGEMART_MQTT_PASSWORD_FILE": "mqtt_password_file",
    "EDGEMART_MQTT_CA_FILE": "mqtt_ca_file",
}
"""Broker credentials from the environment, the same names for agent and gateway, and the
settings field each fills (a clear password is taken from the environment only)."""
CLEAR_URL_WARNING = (
    "the broker password is in the broker URL, visible in the process list;"
    " prefer --mqtt-password-file or EDGEMART_MQTT_PASSWORD"
)


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


def read_secret(path: Path) -> str:
    """A password file's content without its trailing newline (blocking: at start-up);
    CredentialError naming the file and what is wrong, never the content."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise CredentialError(path, f"cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_SECRET_BYTES:
        raise CredentialError(path, "larger than a password can be")
    try:
        secret = raw.decode().rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise CredentialError(path, "not UTF-8") from exc
    if not secret:
        raise CredentialError(path, "the file is empty")
    return secret


def password_from_url(password: str | None) -> str | None:
    """A password taken from the broker URL, with the warning that it is visible to `ps`."""
    if password is not None:
        log.warning(CLEAR_URL_WARNING)
    return password


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who we are to the broker and how we check it is the broker; the password never
    appears in `repr`."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None
    """CA bundle to verify the broker's certificate (implies TLS); the system's when None."""
    cert_file: Path | None = None
    """A client certificate (mutual TLS: the broker may take its CN as the username)."""
    key_file: Path | None = None
    """The client certificate's private key."""

    @classmethod
    def of(
        cls,
        username: str | None,
        password: _Secret | None,
        *,
        tls: bool = False,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> Credentials:
        """From settings that hold the password as a pydantic `SecretStr`."""
        secret = password.get_secret_value() if password is not None else None
        tls = tls or ca_file is not None or cert_file is not None
        return cls(username, secret, tls, ca_file, cert_file, key_file)

    def tls_params(self) -> aiomqtt.TLSParameters | None:
        if not self.tls:
            return None
        return aiomqtt.TLSParameters(
            ca_certs=str(self.ca_file) if self.ca_file else None,
            certfile=str(self.cert_file) if self.cert_file else None,
            keyfile=str(self.key_file) if self.key_file else None,
        )


class MqttVersion(StrEnum):
    V311 = "3.1.1"
    V5 = "5"


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for us when the session dies without a goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Everything that shapes one MQTT session; `make_client` turns it into a client."""

    host: str
    port: int
    client_id: str
    credentials: Credentials = Credentials()
    clean_start: bool = False
    """False keeps a persistent session (subscriptions and queued QoS 1 messages) across
    reconnects; MQTT 3.1.1's clean session flag, MQTT 5's clean start."""
    session_expiry_s: int | None = None
    """MQTT 5 only: how long the broker keeps the session after a disconnect (None: the
    broker's default for 3.1.1, which is forever; 0 in MQTT 5 when not given)."""
    will: Will | None = None
    keepalive: int = 30
    timeout: float = 10.0
    """Connect, subscribe and PUBACK waits, seconds."""
    version: MqttVersion = MqttVersion.V311
    max_queued_incoming: int = 10_000
    max_queued_incoming_bytes: int | None = None
    """Payload bytes received and not yet consumed, at most (`Connection`); None: unbounded."""
    max_queued_outgoing: int | None = None
    pending_publish_warn: int = 10
    """Publishes awaiting their PUBACK past which aiomqtt logs a warning."""

    @property
    def broker(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.credentials.tls else 'mqtt'}://{host}:{self.port}"


def make_client(options: ClientOptions) -> aiomqtt.Client:
    """An unconnected aiomqtt client for `options` (enter it to connect)."""
    creds = options.credentials
    will = options.will
    v5 = options.version is MqttVersion.V5
    properties = None
    if v5 and options.session_expiry_s is not None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho ships no annotation here
        properties.SessionExpiryInterval = options.session_expiry_s
    client = aiomqtt.Client(
        options.host,
        options.port,
        identifier=options.client_id,
        clean_session=None if v5 else options.clean_start,
        clean_start=options.clean_start if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
        will=aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if will is not None
        else None,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        keepalive=options.keepalive,
        timeout=options.timeout,
        max_queued_incoming_messages=options.max_queued_incoming,
        max_queued_outgoing_messages=options.max_queued_outgoing,
        username=creds.username,
        password=creds.password,
        tls_params=creds.tls_params(),
    )
    client.pending_calls_threshold = options.pending_publish_warn
    # aiomqtt drops a subscribe's future when its caller is cancelled (a shutdown mid-
    # subscribe); a SUBACK arriving after that raises KeyError in aiomqtt's paho callback
    # (`Client._on_subscribe`, aiomqtt/client.py), which paho re-raises into the event loop
    # as an "Exception in callback" traceback. paho's `suppress_exceptions` logs such a
    # callback error at ERROR instead (paho.mqtt.client.Client, "suppress_exceptions").
    client._client.suppress_exceptions = True  # aiomqtt has no public setter for it
    return client
