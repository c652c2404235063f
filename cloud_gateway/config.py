"""The gateway's settings: one validated object built once at start-up."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cloud_gateway.errors import ConfigError
from protocol import codec
from protocol.topics import Topics

GROUP_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://HOST:PORT` (port defaults to 1883) to `(host, port)`; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"broker must look like mqtt://HOST:PORT, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r} has a path, query or fragment")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise ValueError(f"broker URL {url!r} has a bad port") from exc
    return parts.hostname, port


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
    ack_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    """Acks for one device are coalesced over this window after the commit."""
    max_payload_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = codec.MAX_COMPRESSED
    max_decompressed_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = (
        codec.MAX_DECOMPRESSED
    )
    max_http_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    bundle_ttl_s: Annotated[float, Field(gt=60, le=90 * 86400)] = 7 * 86400.0
    """A catalog bundle expires at most this long after it is issued."""
    catalog_refresh_s: Annotated[float, Field(gt=0, le=86400)] = 3600.0
    """How often catalogs past half their lifetime are re-signed and republished."""
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
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

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        parse_broker_url(value)
        return value

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
    def db_path(self) -> Path:
        return self.data_dir / "gateway.db"


def load_settings(source: str | None = None, **values: Any) -> GatewaySettings:
    """Validate settings, turning the first error into a ConfigError that names the field."""
    clean = {k: v for k, v in values.items() if v is not None}
    try:
        return GatewaySettings(**clean)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        raise ConfigError(err["msg"], field=loc, source=source) from exc
