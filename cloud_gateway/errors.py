"""The gateway's errors: `GatewayError` at the root, narrow subclasses carrying what went wrong."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting is invalid; names the field (and the source, when there is one)."""

    def __init__(
        self, message: str, *, field: str | None = None, source: str | None = None
    ) -> None:
        where = ", ".join(p for p in (source and f"in {source}", field and f"field {field}") if p)
        super().__init__(f"{message} ({where})" if where else message)
        self.field = field
        self.source = source


class KeyStoreError(GatewayError):
    """The signing key or trust file on disk cannot be read or written."""


class StoreError(GatewayError):
    """The gateway's store failed (disk full, corrupt file, locked too long)."""


RETRY_AFTER_S = 10
"""What `Retry-After` tells a caller of a store that cannot write now."""


class StoreUnavailable(StoreError):
    """The store cannot write now (an I/O error, the server out of resources): a state that
    passes, not a bug; the API answers 503 with `Retry-After`, readiness fails meanwhile."""

    status = 503

    def __init__(
        self, message: str, *, free_bytes: int | None = None, retry_after_s: int = RETRY_AFTER_S
    ) -> None:
        super().__init__(message)
        self.free_bytes = free_bytes
        self.retry_after_s = retry_after_s


class StoreFull(StoreUnavailable):
    """The store's disk is full (SQLITE_FULL, ENOSPC, PostgreSQL's 53100 disk_full): 507."""

    status = 507


class NotFound(GatewayError):
    """A campaign, device or other named thing does not exist."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class InvalidTransition(GatewayError):
    """A campaign cannot move from its state to the one asked for."""

    def __init__(self, campaign_id: str, state: str, action: str) -> None:
        super().__init__(f"campaign {campaign_id!r} is {state}: cannot {action}")
        self.campaign_id = campaign_id
        self.state = state
        self.action = action


class InvalidInput(GatewayError):
    """What a caller sent is invalid (a manifest, a model file, a parameter); HTTP 400.
    `errors` lists (loc, msg) pairs per field, when there are some."""

    def __init__(self, message: str, *, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors


class Conflict(GatewayError):
    """A request clashes with what exists (a duplicate id); HTTP 409 naming the field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class LinkDown(GatewayError):
    """The MQTT link is not connected, so nothing can be published right now."""


class ClaimRefused(GatewayError):
    """A provisioning request refused: an unknown or revoked claim credential (HTTP 401), or
    a known one used again for a device id or past its batch's size (HTTP 409, audited)."""

    def __init__(self, reason: str, *, known: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.known = known


class InviteRefused(GatewayError):
    """A household invite that cannot be spent: unknown, used by another device, or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
