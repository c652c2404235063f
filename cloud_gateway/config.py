"""The gateway's settings: one validated object built once at start-up."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from cloud_gateway.errors import ConfigError
from mqttlink import connect
from mqttlink.errors import CredentialError
from protocol import broker_url, codec
from protocol.topics import Topics

GROUP_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


log = logging.getLogger(__name__)

DB_ENV = "EDGEMART_DB"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def sqlite_path(db: str) -> Path | None:
    """The SQLite file a `--db` value names (a path, or `sqlite:PATH` / `sqlite:///PATH`);
    None for a PostgreSQL URL; ValueError, naming the flag and the value, for anything else."""
    if db.startswith(POSTGRES_SCHEMES) and len(db) > db.index("//") + 2:
        return None
    path = db.removeprefix("sqlite:")
    if path != db and path.startswith("//"):
        path = path[2:]  # sqlite:///abs/path -> /abs/path
    if path.strip() and "://" not in path and "\0" not in path:
        return Path(path)
    raise ValueError(
        f"the database {db!r} is neither a SQLite file (a path or sqlite:///PATH)"
        " nor a PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE)"
    )


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://HOST:PORT` (1883 by default; `mqtts://` 8883) to `(host, port)`; ValueError."""
    parsed = broker_url.parse_broker_url(url)
    return parsed.host, parsed.port


class GatewaySettings(BaseModel):
    """Everything one gateway process needs; validated once, immutable afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str = "mqtt://127.0.0.1:1883"
    data_dir: Path
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    topic_root: str = "edgemart/v1"
    shared_group: str | None = None
    client_id: str | None = None
    """MQTT client id; stable across restarts (persistent session). Default: from data_dir."""
    db: str | None = None
    """The gateway database: a SQLite file (default `data_dir/gateway.db`; one worker only)
    or a `postgresql://` URL (`--db`, `EDGEMART_DB`)."""
    ack_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    """Acks for one device are coalesced over this window after the commit."""
    max_payload_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = codec.MAX_COMPRESSED
    max_decompressed_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = (
        codec.MAX_DECOMPRESSED
    )
    max_http_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    bundle_ttl_s: Annotated[float, Field(gt=60, le=90 * 86400)] = 7 * 86400.0
    timestamp_interval_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    """How often the signed freshness timestamp is issued again (issue 14)."""
    keys_watch_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """How often `DATA_DIR/keys/` is read again: a key activated, added or revoked there is
    signed with and published within this long, with no restart (issue 14)."""
    timestamp_ttl_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 3600.0
    """How long one stays valid: a device that holds none younger says `stale_trust`."""
    """A catalog bundle expires at most this long after it is issued."""
    catalog_refresh_s: Annotated[float, Field(gt=0, le=86400)] = 3600.0
    """How often catalogs past half their lifetime are re-signed and republished."""
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_queued_incoming: Annotated[int, Field(ge=16, le=1_000_000)] = 10_000
    """Messages received but not yet handled, at most; past it a message is dropped, counted as
    `uplink_overflow` (`GET /v1/stats`), and left to its device's resend (no ack goes back)."""
    max_queued_incoming_bytes: Annotated[int, Field(ge=16 * 1024, le=4 * 1024**3)] = 64 * 1024**2
    """Payload bytes of those messages, at most (a peer chooses their size: 10,000 messages of
    the broker's 1 MiB packets would be 10 GiB); past it, the same drop and count. A message
    that finds the queue empty is always taken, so one larger than this still gets through."""
    reconnect_max_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    token_cache_s: Annotated[float, Field(ge=0, le=600)] = 5.0
    claim_batch_max: Annotated[int, Field(ge=1, le=4096)] = 256
    """Claims decided per SQLite transaction at most (1: one transaction per claim)."""
    scheduler_tick_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    """How often scheduled campaigns are started and expired ones ended."""
    resend_after_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    """A device bundle without a receipt is sent again after this long (and on each birth)."""
    model_halt_fraction: Annotated[float, Field(gt=0, le=1)] = 0.05
    """A model rollout halts when at least this share of the devices reporting on it failed
    (health check refused it or it was rolled back at run time) ..."""
    model_halt_min_devices: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    """... and at least this many devices failed."""
    experiment_tick_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """How often running model experiments are looked at (each look counts their outcomes)."""

    retention_signals_days: Annotated[int, Field(ge=1, le=3650)] = 30
    """Raw signals are kept this many days after the day they were received (issue 12)."""
    retention_aggregates_days: Annotated[int, Field(ge=1, le=3650)] = 90
    """Aggregate snapshots: this many days after the day one was last written."""
    retention_outcomes_days: Annotated[int, Field(ge=1, le=3650)] = 180
    """Outcomes (impressions, clicks, ... and the features each decision used)."""
    retention_batches_days: Annotated[int, Field(ge=1, le=3650)] = 400
    """Batch keys (device, outbox, seq), which make a resent batch count once: kept longer
    than a device may hold an unacked batch. The agent's outbox is bounded by bytes, not age,
    so this covers a device offline for over a year; one resent after its key went would be
    stored again. Keep it at least as long as every other kind."""
    retention_interval_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 3600.0
    """How often the retention loop runs (and creates PostgreSQL partitions ahead)."""
    retention_chunk_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    """Rows deleted per transaction at most (ingest commits between chunks)."""

    mqtt_username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """The gateway's broker username (`gateway` in `deploy/edgemart.acl`)."""
    mqtt_password: SecretStr | None = None
    """From a file or the environment (`mqtt_credentials`); never logged."""
    mqtt_tls: bool = False
    """TLS to the broker (also set by an `mqtts://` URL or a CA file)."""
    mqtt_ca_file: Path | None = None
    """CA bundle to verify the broker's certificate; the system's CAs when not given."""

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        """`user:password@` in the broker URL moves to the credential fields (the URL kept
        and logged has none); a password there is visible in the process list: warned."""
        if not isinstance(data, dict) or not isinstance(data.get("broker"), str):
            return data
        try:
            parsed = broker_url.parse_broker_url(data["broker"])
        except ValueError:
            return data  # reported by the field validator, naming the field
        if parsed.username is None and parsed.password is None:
            return data
        out = {**data, "broker": parsed.redacted()}
        out.setdefault("mqtt_username", parsed.username)
        if parsed.password is not None and out.get("mqtt_password") is None:
            out["mqtt_password"] = connect.password_from_url(parsed.password)  # warns
        return out

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @model_validator(mode="after")
    def _tls(self) -> GatewaySettings:
        if self.mqtt_ca_file is not None and not self.mqtt_ca_file.is_file():
            raise ValueError(f"mqtt_ca_file {str(self.mqtt_ca_file)!r} is not a file")
        return self

    @property
    def broker_tls(self) -> bool:
        """TLS to the broker: an `mqtts://` URL, `mqtt_tls` or a CA file."""
        tls = broker_url.parse_broker_url(self.broker).tls
        return tls or self.mqtt_tls or self.mqtt_ca_file is not None

    @field_validator("topic_root")
    @classmethod
    def _root(cls, value: str) -> str:
        Topics(value)
        return value

    @field_validator("shared_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and not GROUP_RE.fullmatch(value):
            raise ValueError(f"shared_group must match {GROUP_RE.pattern}")
        return value

    @field_validator("db")
    @classmethod
    def _db(cls, value: str | None) -> str | None:
        if value is not None:
            sqlite_path(value)
        return value

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and not CLIENT_ID_RE.fullmatch(value):
            raise ValueError(f"client_id must match {CLIENT_ID_RE.pattern}")
        return value

    @property
    def broker_host(self) -> str:
        return parse_broker_url(self.broker)[0]

    @property
    def broker_port(self) -> int:
        return parse_broker_url(self.broker)[1]

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_root)

    @property
    def mqtt_client_id(self) -> str:
        """The configured id, or one derived from the data directory: stable per gateway."""
        if self.client_id:
            return self.client_id
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        return f"edgemart-gw-{digest}"

    @property
    def mqtt_session(self) -> dict[str, Any]:
        """How the link's MQTT session is kept (`ClientOptions` fields). Alone: a persistent
        session, so uplink queued while it restarts waits for it. One of a `shared_group`:
        MQTT 5 clean start with session expiry 0 (PROTOCOL.md), so the broker keeps no
        session for a dead worker: Mosquitto would go on handing it its share of the uplink,
        parked until it returns; device resends cover what was in flight."""
        if self.shared_group is None:
            return {"clean_start": False}
        return {"clean_start": True, "session_expiry_s": 0, "version": connect.MqttVersion.V5}

    @property
    def db_path(self) -> Path:
        """The SQLite file (for a PostgreSQL `db`, the one the data directory would hold)."""
        found = sqlite_path(self.db) if self.db is not None else None
        return found if found is not None else self.data_dir / "gateway.db"

    @property
    def db_url(self) -> str | None:
        """The PostgreSQL URL, or None when the database is a SQLite file."""
        if self.db is not None and sqlite_path(self.db) is None:
            return self.db
        return None


def read_secret(path: Path) -> str:
    """A password file's content (`mqttlink.connect.read_secret`), errors naming the field."""
    try:
        return connect.read_secret(path)
    except CredentialError as exc:
        raise ConfigError(exc.reason, field="mqtt_password_file", source=str(path)) from exc


def mqtt_credentials(
    username: str | None = None,
    password_file: Path | None = None,
    ca_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Broker credentials for `load_settings`: options first, then `EDGEMART_MQTT_*`.

    The password comes from a file (`password_file`, `EDGEMART_MQTT_PASSWORD_FILE`) or
    `EDGEMART_MQTT_PASSWORD`, never from a command-line value.
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    user = username or env.get("EDGEMART_MQTT_USERNAME")
    if user:
        out["mqtt_username"] = user
    file = password_file or (
        Path(env["EDGEMART_MQTT_PASSWORD_FILE"]) if env.get("EDGEMART_MQTT_PASSWORD_FILE") else None
    )
    if file is not None:
        out["mqtt_password"] = SecretStr(read_secret(file))
    elif env.get("EDGEMART_MQTT_PASSWORD"):
        out["mqtt_password"] = SecretStr(env["EDGEMART_MQTT_PASSWORD"])
    ca = ca_file or (
        Path(env["EDGEMART_MQTT_CA_FILE"]) if env.get("EDGEMART_MQTT_CA_FILE") else None
    )
    if ca is not None:
        out["mqtt_ca_file"] = ca
    return out


def db_option(db: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The `--db` value for `load_settings`: the option, else `EDGEMART_DB`, else None."""
    env = os.environ if environ is None else environ
    return db or env.get(DB_ENV) or None


def load_settings(source: str | None = None, **values: Any) -> GatewaySettings:
    """Validate settings, turning the first error into a ConfigError that names the field."""
    clean = {k: v for k, v in values.items() if v is not None}
    try:
        return GatewaySettings(**clean)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        raise ConfigError(err["msg"], field=loc, source=source) from exc
