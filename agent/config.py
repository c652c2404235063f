"""Agent settings: firmware profile TOML, config file, then `EDGEMART_*` env, validated once.

Over 400 lines on purpose: the settings models and their one layered loader (profile, file,
environment, flags, with errors naming the field and the source) are read together; split,
the precedence rules would live in two places."""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, ValidationError

import firmware_profiles
from agent.errors import ConfigError
from mqttlink import connect
from mqttlink.connect import CREDENTIAL_ENV
from mqttlink.errors import CredentialError
from protocol import broker_url
from protocol.codec import field_errors, loads_finite
from protocol.errors import NonFiniteNumber
from protocol.topics import COHORT_RE, DEVICE_ID_RE, PROFILE_RE, Topics

log = logging.getLogger(__name__)

ENV_PREFIX = "EDGEMART_"
BROKER_ENV = "EDGEMART_BROKER"
"""The default of `--broker` (a URL or a comma-separated list of them)."""
COMMAND_ENV = frozenset({BROKER_ENV, "EDGEMART_PROFILE", "EDGEMART_DEVICE_ID"})
"""Variables that stand for command-line arguments (the systemd unit passes them as options
from its environment file), not for profile keys: the environment layer skips them."""
AGENT_KEYS = frozenset(
    {
        "topic_root",
        "max_request_bytes",
        "max_request_items",
        "seen_ids_max",
        "mqtt_keepalive_s",
        "mqtt_reconnect_s",
        "mqtt_reconnect_max_s",
        "mqtt_username",
        "mqtt_password_file",
        "mqtt_ca_file",
        "mqtt_tls",
        "claim_file",
        "provision_url",
        "household_invite_file",
        "lan_host",
        "api_socket",
        "api_socket_group",
    }
)

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.:-]{1,64}$")]
Host = Annotated[str, StringConstraints(min_length=1, max_length=253)]
Port = Annotated[int, Field(ge=1, le=65535)]
MAX_BROKERS = 16


class _Strict(BaseModel):
    # TOML reads `nan` and `inf` as floats: a budget of `inf` ms or a ttl of `nan` hours is
    # refused here with the field and the file, like any other bad value.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Budgets(_Strict):
    memory_mb: Annotated[int, Field(ge=1, le=65536)] = 128
    """Resident set the agent should stay under (sampled; over it the agent sheds caches).
    The floor of Python + numpy + onnxruntime + one model is ~102-110 MB right after import,
    ~73 MB once the clean library pages only start-up used are handed back (a device
    where no other process maps the same libraries; bench `agent_floor_page_out_mb`)."""
    reclaim_clean_pages: bool = True
    """After start and when over `memory_mb`, hand clean library pages back to the kernel
    (Linux `MADV_PAGEOUT`); pages still in use come back on their next touch."""
    outbox_max_bytes: Annotated[int, Field(ge=4096)] = 8 * 1024 * 1024
    outbox_full: Literal["evict", "refuse"] = "evict"
    uplink_bytes_per_day: Annotated[int, Field(ge=0)] = 10_000_000
    scoring_cpu_ms: Annotated[float, Field(gt=0)] = 5.0
    max_candidates: Annotated[int, Field(ge=1, le=10_000)] = 500


class UplinkSettings(_Strict):
    batch_max_signals: Annotated[int, Field(ge=1, le=2000)] = 500
    batch_max_age_s: Annotated[float, Field(ge=0, le=3600)] = 2.0
    ack_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """The ack timeout until an ack was measured; then it follows the measured ack latency
    (smoothed + 4 x variance, `agent.link.acktimer`) within [`ack_timeout_min_s`,
    `ack_timeout_max_s`]."""
    ack_timeout_min_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    ack_timeout_max_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    resend_max_s: Annotated[float, Field(gt=0, le=86400)] = 600.0
    """The longest wait before a resend: each resend of a batch waits twice the last
    (jittered), up to this."""
    idle_wake_s: Annotated[float, Field(gt=0, le=86400)] = 600.0
    """The longest the uplink sleeps with nothing due (a safety net: new rows wake it)."""
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 4
    compress: Literal["auto", "never", "always"] = "auto"
    mode: Literal["raw", "aggregate"] = "aggregate"  # privacy first: raw only where asked
    durability: Literal["full", "normal"] = "full"
    aggregate_window_s: Annotated[int, Field(ge=60, le=86400)] = 3600
    drain_batches_per_s: Annotated[float, Field(gt=0, le=1000)] = 10.0
    degrade_at: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Share of `budgets.uplink_bytes_per_day` after which raw mode degrades to aggregates
    for the rest of the day; at the whole budget the uplink holds until the next day."""

    @property
    def compress_flag(self) -> bool | None:
        """The `compress=` argument of `protocol.codec.encode` for this setting."""
        return {"auto": None, "never": False, "always": True}[self.compress]


class ConsentDefaults(_Strict):
    analytics: bool = False
    personalization: bool = False
    marketing: bool = False


ATTR_TYPES = ("string", "integer", "number", "boolean")
AttrType = Literal["string", "integer", "number", "boolean"]


class SignalPolicy(_Strict):
    """`[signals.<kind>]` of a profile: the kind's priority and time to live; for a kind
    outside the documented table, its section also declares it (a custom kind) and `attrs`
    the types of its attributes (`agent.intake.kinds`)."""

    priority: Annotated[int, Field(ge=0, le=100)] = 50
    ttl_hours: Annotated[float, Field(gt=0, le=24 * 3650)] = 168.0
    attrs: Annotated[dict[Name, AttrType], Field(max_length=64)] = Field(default_factory=dict)


HHMM = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-4]):[0-5][0-9]$")]


class QuietHours(_Strict):
    """A daily quiet period in the device's local time (`"22:00"` to `"07:00"` crosses midnight)."""

    start: HHMM
    end: HHMM


class PolicySettings(_Strict):
    """Decision policy of a profile: quiet hours, daily frequency caps, attribution, claims."""

    quiet_hours: Annotated[list[QuietHours], Field(max_length=8)] = Field(default_factory=list)
    offer_per_day: Annotated[int, Field(ge=0, le=10_000)] | None = None
    campaign_per_day: Annotated[int, Field(ge=0, le=10_000)] | None = None
    surface_per_day: Annotated[
        dict[Name, Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=16)
    ] = Field(default_factory=dict)
    global_per_day: Annotated[int, Field(ge=0, le=100_000)] | None = None
    attribution_click_days: Annotated[float, Field(gt=0, le=90)] = 7.0
    attribution_impression_days: Annotated[float, Field(ge=0, le=90)] = 1.0
    counterfactual_gap_s: Annotated[float, Field(ge=0, le=86_400)] = 3600.0
    claim_resend_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    explain_report_s: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    """How often the per-campaign explanation counts go into the outbox (issue 18)."""
    min_score: Annotated[float, Field(ge=0, le=1)] | None = None
    """The least model score (a click probability) an offer needs to be shown; below it the
    offer is filtered `below_min_score` and the slot stays empty. None (the shipped profiles):
    every eligible offer may be shown up to the limit. Not applied to the priority fallback of
    a device without a model (docs/decisions.md, "Minimum score")."""


class Profile(_Strict):
    """One firmware profile (`firmware_profiles/<name>.toml`), validated."""

    name: Annotated[str, StringConstraints(pattern=PROFILE_RE.pattern)]
    description: str = ""
    api_port: Annotated[int, Field(ge=0, le=65535)] = 0
    surfaces: Annotated[list[Name], Field(min_length=1, max_length=16)]
    cohorts: Annotated[
        list[Annotated[str, StringConstraints(pattern=COHORT_RE.pattern)]], Field(max_length=16)
    ] = Field(default_factory=list)
    model: Name = "default"
    ranking: Literal["local", "thin"] = "local"
    """`local`: rank with this device's ONNX model. `thin`: no model and no onnxruntime in the
    process; ask the household's coordinator to rank (`agent.decide.remote`), by priority
    when none answers (docs/models.md, "Thin devices")."""
    timezone: str = "UTC"
    budgets: Budgets = Field(default_factory=Budgets)
    uplink: UplinkSettings = Field(default_factory=UplinkSettings)
    consent: ConsentDefaults = Field(default_factory=ConsentDefaults)
    signals: dict[Name, SignalPolicy] = Field(default_factory=dict)
    decisions: PolicySettings = Field(default_factory=PolicySettings)

    def policy(self, kind: str) -> SignalPolicy:
        """Priority and time-to-live of a signal kind (`signals.default` otherwise)."""
        return self.signals.get(kind) or self.signals.get("default") or SignalPolicy()


class AgentSettings(_Strict):
    """Everything one agent needs, validated once; frozen."""

    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_RE.pattern)]
    broker_host: Host
    broker_port: Port
    broker_alternates: Annotated[
        tuple[tuple[Host, Port], ...], Field(max_length=MAX_BROKERS - 1)
    ] = ()
    """The other nodes of the broker cluster (`--broker URL,URL,...` after the first), tried
    in order after it; one session (client id, credentials) on all of them."""
    data_dir: Path
    api_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    lan_host: Host | None = None
    """The LAN address the household API binds to and advertises (issue 17, docs/household.md);
    None: the agent joins no household, even with a membership grant in its data dir."""
    api_socket: Path | None = None
    """Also serve the local API on this Unix socket (mode 0660): callers without a token are
    known by their user id (SO_PEERCRED, `edgemart agent token bind`)."""
    api_socket_group: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    """The socket's group (name or gid): the apps' users in it may connect."""
    trust: Path
    profile: Profile
    topic_root: str = "edgemart/v1"
    max_request_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    max_request_items: Annotated[int, Field(ge=1, le=100_000)] = 1000
    seen_ids_max: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    mqtt_keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    mqtt_reconnect_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """A lost broker is tried again after a delay uniform in [0, this], doubled each failed
    round up to `mqtt_reconnect_max_s` (full jitter): a fleet that lost its broker together
    comes back spread over the first window, not in step."""
    mqtt_reconnect_max_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    mqtt_username: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    """The broker username; with a password and no username, the device id (the ACL's %u)."""
    mqtt_password: SecretStr | None = None
    """From `mqtt_password_file`, `EDGEMART_MQTT_PASSWORD` or the URL; never logged."""
    mqtt_password_file: Path | None = None
    mqtt_tls: bool = False
    """TLS to the broker (also set by an `mqtts://` URL or a CA file)."""
    mqtt_ca_file: Path | None = None
    """CA bundle to verify the broker's certificate; the system's CAs when not given."""
    mqtt_cert_file: Path | None = None
    """This device's X.509 client certificate (mutual TLS; set by provisioning)."""
    mqtt_key_file: Path | None = None
    """Its private key (mode 0600, made on the device, never sent)."""
    claim_file: Path | None = None
    """The factory claim credential: with `provision_url`, the first start gets the device's
    identity (`agent.provisioning`)."""
    provision_url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")] | None = None
    """The gateway's HTTP(S) base URL that provisions devices (`POST /v1/provision`)."""
    household_invite_file: Path | None = None
    """A one-time household invite (`POST /v1/households/{id}/invites`, handed over by the
    owner's app): redeemed at provisioning for this device's signed membership, kept in
    `DATA_DIR/household/membership.json` (issue 17, docs/household.md)."""

    @property
    def brokers(self) -> tuple[tuple[str, int], ...]:
        """Every broker to try, (host, port), in the order given: the first, then the others."""
        return ((self.broker_host, self.broker_port), *self.broker_alternates)

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_root)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.profile.timezone)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "agent.sqlite3"


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://HOST:PORT` (port 1883 by default; `mqtts://` 8883) to (host, port)."""
    parsed = _broker(url)
    return parsed.host, parsed.port


def _broker(url: str) -> broker_url.BrokerUrl:
    try:
        return broker_url.parse_broker_url(url, bare_host=True)
    except ValueError as exc:
        raise ConfigError(str(exc), field="broker") from exc


def _brokers(urls: str) -> list[broker_url.BrokerUrl]:
    """`--broker`: one URL or a comma-separated list (the nodes of one cluster)."""
    try:
        parsed = broker_url.parse_broker_urls(urls, bare_host=True)
    except ValueError as exc:
        raise ConfigError(str(exc), field="broker") from exc
    if len(parsed) > MAX_BROKERS:
        raise ConfigError(f"more than {MAX_BROKERS} broker URLs", field="broker")
    return parsed


def read_secret(path: Path, field: str) -> str:
    """A password file's content (`mqttlink.connect.read_secret`), errors naming the field."""
    try:
        return connect.read_secret(path)
    except CredentialError as exc:
        raise ConfigError(exc.reason, source=str(path), field=field) from exc


def _credentials(url: broker_url.BrokerUrl, agent_doc: Mapping[str, Any]) -> dict[str, Any]:
    """Broker username, password and TLS from the merged agent keys (options over the
    environment over the config file), then the URL. The password: a file first, then
    `EDGEMART_MQTT_PASSWORD`, then the URL (visible in the process list: warned)."""
    out: dict[str, Any] = {"mqtt_password": None}
    username = agent_doc.get("mqtt_username")
    password_file = agent_doc.get("mqtt_password_file")
    password: str | None = None
    if password_file:
        out["mqtt_password_file"] = Path(password_file)
        password = read_secret(Path(password_file), "mqtt_password_file")
    elif agent_doc.get("mqtt_password"):
        password = str(agent_doc["mqtt_password"])
    elif url.password is not None:
        password = connect.password_from_url(url.password)  # warns: visible to `ps`
    username = username or url.username
    if username:
        out["mqtt_username"] = username
    if password is not None:
        out["mqtt_password"] = SecretStr(password)
    ca_file = agent_doc.get("mqtt_ca_file")
    if ca_file:
        if not Path(ca_file).is_file():
            raise ConfigError("CA file not found", source=str(ca_file), field="mqtt_ca_file")
        out["mqtt_ca_file"] = Path(ca_file)
    if url.tls or ca_file:
        out["mqtt_tls"] = True  # otherwise `mqtt_tls` as the layers set it (validated)
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError("file not found", source=str(path)) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read TOML: {exc}", source=str(path)) from exc


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _split(doc: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A layer's document into (profile keys, agent keys); agent keys live in `[agent]`."""
    profile = {k: v for k, v in doc.items() if k != "agent"}
    agent = doc.get("agent", {})
    if not isinstance(agent, Mapping):
        raise ConfigError("[agent] must be a table", field="agent")
    return profile, dict(agent)


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """`EDGEMART_UPLINK__ACK_TIMEOUT_S=1.5` -> `{"uplink": {"ack_timeout_s": "1.5"}}`."""
    doc: dict[str, Any] = {}
    for name, raw in environ.items():
        if name in CREDENTIAL_ENV:
            if raw:
                doc.setdefault("agent", {})[CREDENTIAL_ENV[name]] = raw
            continue
        if not name.startswith(ENV_PREFIX) or name in COMMAND_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(path):
            continue
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = loads_finite(raw)
            except json.JSONDecodeError:
                value = raw
            except NonFiniteNumber as exc:
                raise ConfigError(str(exc), source="environment", field=name) from exc
        node = doc
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("conflicting variables", source="environment", field=name)
        node[path[-1]] = value
    return doc


def _validate_profile(doc: dict[str, Any], source: str) -> Profile:
    try:
        profile = Profile.model_validate(doc)
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise ConfigError(first["msg"], source=source, field=first["loc"]) from exc
    try:
        ZoneInfo(profile.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {profile.timezone!r}", source=source, field="timezone"
        ) from exc
    if 86400 % profile.uplink.aggregate_window_s:
        raise ConfigError(
            "must divide a day (86400 s)", source=source, field="uplink.aggregate_window_s"
        )
    return profile


def load_settings(  # noqa: PLR0917  # the published seam takes these positionally
    profile: str,
    device_id: str,
    broker: str,
    data_dir: Path,
    api_port: int | None = None,
    trust: Path = Path("trust.json"),
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentSettings:
    """Profile TOML -> config file -> `EDGEMART_*` env -> explicit arguments and overrides.

    `profile` is a shipped profile name or a path to a `.toml`; `broker` one URL or a
    comma-separated list of a cluster's nodes (`AgentSettings.brokers`). A layer's agent-level keys
    (`topic_root`, `max_request_bytes`, ...) live in its `[agent]` table (env:
    `EDGEMART_AGENT__TOPIC_ROOT`); `overrides` may give them at the top level too.
    Errors raise ConfigError naming the field and the layer that broke it.
    """
    if profile.endswith(".toml") or "/" in profile:
        profile_file = Path(profile)
    else:
        if not PROFILE_RE.fullmatch(profile):
            raise ConfigError(f"bad profile name {profile!r}", field="profile")
        profile_file = firmware_profiles.profile_path(profile)
        if not profile_file.exists():
            known = ", ".join(firmware_profiles.available())
            raise ConfigError(f"unknown profile {profile!r} (known: {known})", field="profile")
    profile_doc = _read_toml(profile_file)
    _validate_profile(profile_doc, str(profile_file))
    agent_doc: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), _read_toml(config_file)))
    env = os.environ if environ is None else environ
    layers.append(("environment", _env_layer(env)))
    if overrides:
        ov = dict(overrides)
        top_agent = {k: ov.pop(k) for k in list(ov) if k in AGENT_KEYS}
        ov["agent"] = _merge(dict(ov.get("agent", {})), top_agent)
        layers.append(("command line", ov))
    source = str(profile_file)
    origin: dict[str, str] = {}
    """The layer that last set each agent-level key: an error names where a value came from."""
    for source, layer in layers:
        prof_part, agent_part = _split(layer)
        if "mqtt_password" in agent_part and source != "environment":
            raise ConfigError(
                "a password is never configured in clear: use mqtt_password_file or"
                " EDGEMART_MQTT_PASSWORD",
                source=source,
                field="agent.mqtt_password",
            )
        profile_doc = _merge(profile_doc, prof_part)
        agent_doc = _merge(agent_doc, agent_part)
        origin.update(dict.fromkeys(agent_part, source))
        _validate_profile(profile_doc, source)
    validated = _validate_profile(profile_doc, source)
    urls = _brokers(broker)
    url = urls[0]
    credentials = _credentials(url, agent_doc)
    if "mqtt_password" in credentials and "mqtt_username" not in credentials:
        credentials["mqtt_username"] = device_id  # the broker ACL's %u is the device id
    try:
        settings = AgentSettings.model_validate(
            {
                **agent_doc,
                **credentials,
                "device_id": device_id,
                "broker_host": url.host,
                "broker_port": url.port,
                "broker_alternates": tuple((u.host, u.port) for u in urls[1:]),
                "data_dir": Path(data_dir),
                "api_port": api_port,
                "trust": Path(trust),
                "profile": validated,
            }
        )
    except ValidationError as exc:
        first = field_errors(exc)[0]
        # a value no layer set is one of the arguments (`--device-id`, `--data-dir`, ...)
        where = origin.get(str(first["loc"]).split(".")[0], "command line")
        raise ConfigError(first["msg"], source=where, field=first["loc"]) from exc
    try:
        settings.topics.keys()
    except ValueError as exc:
        where = origin.get("topic_root", "command line")
        raise ConfigError(str(exc), source=where, field="topic_root") from exc
    return settings
