"""The agent's errors: `AgentError` at the root, narrow subclasses carrying what went wrong."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A profile, config file or environment value is invalid; names the field and the file."""

    def __init__(
        self, message: str, *, source: str | None = None, field: str | None = None
    ) -> None:
        where = ", ".join(p for p in (source and f"in {source}", field and f"field {field}") if p)
        super().__init__(f"{message} ({where})" if where else message)
        self.source = source
        self.field = field


class ModelRejected(AgentError):
    """A model file or manifest the agent cannot serve; the previous model stays."""

    def __init__(self, reason: str, *, version: int | None = None) -> None:
        super().__init__(f"model {version if version is not None else '?'} refused: {reason}")
        self.reason = reason
        self.version = version


class StoreError(AgentError):
    """The on-device SQLite store failed (disk full, corrupt file)."""


class CorruptStore(StoreError):
    """SQLite cannot read the store's file (not a database, malformed, truncated)."""


class DiskFull(StoreError):
    """The disk under the store is full (SQLITE_FULL, ENOSPC): new data waits (HTTP 507)."""

    def __init__(self, free_bytes: int, detail: str = "") -> None:
        super().__init__(
            f"the device's disk is full ({free_bytes} bytes free){': ' + detail if detail else ''}"
        )
        self.free_bytes = free_bytes


class QuotaExceeded(AgentError):
    """The outbox is at its quota and the profile says refuse (HTTP 503)."""


class InvalidInput(AgentError):
    """Input from an app (HTTP body or library call) failed validation; nothing was stored.

    `errors` are `[{"loc": "signals.3.kind", "msg": ...}]`, as the local API returns them.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
        super().__init__(f"invalid input: {detail}")
        self.errors = errors


class TooLarge(AgentError):
    """A request is over the size or item limit (HTTP 413)."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class KeyReused(AgentError):
    """An `Idempotency-Key` already committed with another request body (HTTP 409)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was used with another body within 24 h; use a new key"
        )
        self.key = key


class UnknownOffer(AgentError):
    """An outcome names an offer this device does not hold (HTTP 404)."""

    def __init__(self, offer_id: str) -> None:
        super().__init__(f"unknown offer {offer_id!r}")
        self.offer_id = offer_id


class LinkDown(AgentError):
    """The MQTT link is not connected; the caller keeps the data and retries later."""


class ScoringError(AgentError):
    """Running a loaded model failed (onnxruntime error or wrong output) during a decision."""


class BatchTooLarge(AgentError):
    """A batch payload would pass the gateway's size bounds: cut it smaller (never sent)."""

    def __init__(self, raw_bytes: int, payload_bytes: int) -> None:
        super().__init__(f"batch too large: {raw_bytes} bytes of JSON, {payload_bytes} on the wire")
        self.raw_bytes = raw_bytes
        self.payload_bytes = payload_bytes


class NotStarted(AgentError):
    """The agent's parts exist only once `async with Agent(...)` has entered."""


class ProvisioningRefused(AgentError):
    """The gateway refused this device's claim credential (unknown, revoked, used for this
    device id before, or its batch used up): retrying cannot help, an operator must."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"provisioning refused ({status}): {detail}")
        self.status = status
        self.detail = detail
