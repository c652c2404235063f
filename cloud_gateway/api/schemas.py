"""The API's response models: what `/openapi.json` promises each answer holds (requests are
validated by the domain's own models: `CampaignIn`, `RolloutIn`, `ModelManifest`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from cloud_gateway.campaigns.model import Campaign


class CampaignList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaigns: list[Campaign]


class DeviceOut(BaseModel):
    """A device as the registry knows it."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    status: str
    profile: str | None
    first_seen: str | None
    last_seen: str | None
    agent_version: str | None
    model_version: int | None
    last_seq: int | None
    cohorts: list[str]
    stats: dict[str, Any]
    malformed: int
    policy_version: int | None = None
    """The cloud policy version the device reported running (issue 18)."""
    batches: int | None = None
    signals_stored: int | None = None
    outcomes_stored: int | None = None
    aggregates_cover: int | None = None


class DeviceList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[DeviceOut]


class DeviceExport(BaseModel):
    """Everything the gateway holds for one device (data subject access)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    registry: DeviceOut
    signals: list[dict[str, Any]]
    aggregates: list[dict[str, Any]]
    outcomes: list[dict[str, Any]]
    outcome_features: list[dict[str, Any]]
    """The model inputs logged with each outcome (`id` is the outcome's)."""
    claims: list[dict[str, Any]]
    grants: list[dict[str, Any]]
    """Coupons granted to the device (code included)."""
    device_pushes: list[dict[str, Any]]
    """Offer bundles addressed to the device, with their send and receipt times."""


class DeviceErased(BaseModel):
    """What an erasure removed at the gateway, and the `forget` command sent to the device.

    `command` is `sent` when it went out now, `queued` when the link is down; either way it
    is re-sent (on each birth, and periodically) until the device confirms it by receipt.
    """

    model_config = ConfigDict(extra="forbid")

    device_id: str
    removed: dict[str, int]
    """Rows deleted per table; `grants_anonymized`: coupons kept for stock, device id removed."""
    command_id: str
    command: str


class GatewayStats(BaseModel):
    """Gateway-wide counters (each an integer), how full the uplink's queues are now, uptime
    and version."""

    model_config = ConfigDict(extra="allow")

    uptime_s: float
    version: str
    rejected: dict[str, int]
    uplink_queued_messages: int | None = None
    """Messages the MQTT client holds for ingest (`max_queued_incoming` at most)."""
    uplink_queued_bytes: int | None = None
    """Their payload bytes (`max_queued_incoming_bytes` at most); past either, `uplink_overflow`."""
    ingest_waiting_batches: int | None = None
    """Batches parsed and waiting for their group commit."""
    fleet_devices: int | None = None
    """Devices known to the database (every worker's)."""
    fleet_batches_last_hour: int | None = None
    """Batches stored in the last hour by every worker."""


class Fleet(BaseModel):
    """The fleet at a glance: devices by profile and status, bundles awaiting receipts."""

    model_config = ConfigDict(extra="forbid")

    devices: int
    online: int
    by_profile: dict[str, dict[str, int]]
    bundles_awaiting_receipt: int


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    who: str
    action: str
    target: str | None
    at: str
    detail: dict[str, Any]


class AuditLog(BaseModel):
    """Every change, newest first: who (token or `scheduler`), what, when."""

    model_config = ConfigDict(extra="forbid")

    entries: list[AuditEntry]


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str
    version: str


class Readiness(BaseModel):
    """`/readyz`: `ready` only while every check is ok (200), else 503 with the same body.
    Checks: `broker` (the MQTT link is up), `database` (a write, rolled back, and a read
    succeed), `loops` (every owned loop runs; `down` names those that do not)."""

    model_config = ConfigDict(extra="forbid")

    ready: bool
    checks: dict[str, dict[str, Any]]


class RateOut(BaseModel):
    """A rate with its Wilson 95 % interval."""

    model_config = ConfigDict(extra="forbid")

    value: float
    low: float
    high: float


class ArmOut(BaseModel):
    """One arm of a model experiment: a model version's figures since the start."""

    model_config = ConfigDict(extra="forbid")

    model_version: int
    devices: int
    impressions: int
    clicks: int
    conversions: int
    revenue_per_1000: float
    ctr: RateOut
    conversion: RateOut


class ExperimentStopOut(BaseModel):
    """An operator's stop (`POST /v1/experiments/{id}/stop`): who, the outcome asked, why."""

    model_config = ConfigDict(extra="forbid")

    by: str
    outcome: Literal["rollback", "promote"]
    reason: str


class ExperimentOut(BaseModel):
    """A model experiment: arms live while running, as they were when it ended after."""

    model_config = ConfigDict(extra="forbid")

    id: str
    control: int
    candidate: int
    share: float
    state: Literal["running", "promoted", "rolled_back", "stopped"]
    verdict: str | None
    decided_at: str | None
    started_at: str
    arms: list[ArmOut]
    stop: ExperimentStopOut | None
    """Set when an operator stopped it by hand (state `stopped`)."""


class ExperimentList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiments: list[ExperimentOut]
