"""Domain errors as local API answers: one table from an `AgentError` to a status and a field."""

from __future__ import annotations

from agent.errors import (
    AgentError,
    DiskFull,
    InvalidInput,
    KeyReused,
    QuotaExceeded,
    StoreError,
    TooLarge,
    UnknownOffer,
)
from agent.offers.claims import NotClaimable
from agent.offers.social import NotSocial

STATUS: tuple[tuple[type[AgentError], int, str], ...] = (
    (TooLarge, 413, "(body)"),
    (InvalidInput, 400, ""),
    (UnknownOffer, 404, "offer_id"),
    (NotClaimable, 409, "offer_id"),
    (NotSocial, 409, "offer_id"),
    (KeyReused, 409, "Idempotency-Key"),
    (QuotaExceeded, 503, "(outbox)"),
    (DiskFull, 507, "(disk)"),
    (StoreError, 503, "(store)"),
)
"""(error, HTTP status, the `loc` of its one error entry); InvalidInput carries its own."""


def answer(exc: AgentError) -> tuple[int, list[dict[str, str]]] | None:
    """`(status, errors)` for a domain error the API answers; None for one it does not."""
    for kind, status, loc in STATUS:
        if isinstance(exc, kind):
            if isinstance(exc, InvalidInput):
                return status, exc.errors
            return status, [{"loc": loc, "msg": str(exc)}]
    return None
