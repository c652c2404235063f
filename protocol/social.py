"""Social commerce on the wire (issue 19): group-buy and price-cut requests and signed state.

A device sends a `SocialRequest` on `dev/{id}/up/social` (from its outbox, `id` is the
idempotency key, like a claim's); the gateway answers on `dev/{id}/down/social` with a signed
`SocialState` (signed like claim results, by a key of the `claims` role), and pushes a new one
to every member when a group forms or expires.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from protocol.envelopes import (
    DeviceId,
    Finite,
    Id,
    Message,
    ShortText,
    Signed,
    UtcTime,
)

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford base 32: no I, L, O or U, so a code read aloud or typed is hard to get wrong."""
CODE_LENGTH = 8
"""40 bits: guessing one open code among thousands takes billions of tries (rate-limited)."""

_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})
"""What a person types for a Crockford digit: O for 0, I or L for 1."""


def normalise_code(text: str) -> str | None:
    """A typed code in its canonical form (upper case, no spaces or dashes, confusable
    letters mapped), or None when it cannot be one."""
    code = "".join(c for c in text.upper() if c not in " -").translate(_CONFUSABLE)
    if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
        return None
    return code


ShareCode = Annotated[str, StringConstraints(pattern=r"^[0-9A-HJKMNP-TV-Z]{8}$")]
"""A join or share code, normalised (`normalise_code`)."""

SocialAction = Literal["group_start", "group_join", "cut_start", "cut_help"]
SocialKind = Literal["group", "cut"]
SocialStatus = Literal["open", "formed", "expired", "done", "refused"]
"""open: taking members or helps; formed: a full group (coupon granted); done: a cut that
reached its floor or whose window closed with helps (coupon at the reached price); expired:
a group that did not fill (seats released); refused: the request was not taken (`reason`)."""


class SocialRequest(Message):
    """Uplink on `dev/{id}/up/social`: start or join a group, start or help a cut; `id` is the
    idempotency key (a resend gets the stored answer)."""

    id: Id
    device_id: DeviceId
    action: SocialAction
    campaign_id: Id | None = None
    offer_id: Id | None = None
    """The offer to start a group or a cut of (`group_start`, `cut_start`)."""
    code: ShareCode | None = None
    """The join or share code (`group_join`, `cut_help`)."""
    at: UtcTime

    @model_validator(mode="after")
    def _fields(self) -> SocialRequest:
        starts = self.action in ("group_start", "cut_start")
        if starts and (self.campaign_id is None or self.offer_id is None):
            raise ValueError(f"{self.action} needs campaign_id and offer_id")
        if not starts and self.code is None:
            raise ValueError(f"{self.action} needs a code")
        return self


class SocialState(Signed):
    """Signed state of a group or a cut on `dev/{id}/down/social`, for one member."""

    id: Id
    device_id: DeviceId
    request_id: Id | None = None
    """The request this answers; None for a push (the group formed or expired)."""
    kind: SocialKind
    ref: Id | None = None
    """The group's or cut's id (None when a request was refused before one was found)."""
    campaign_id: Id | None = None
    offer_id: Id | None = None
    status: SocialStatus
    code: ShareCode | None = None
    """The code to share (shown by the device; another household enters it)."""
    size: Annotated[int, Field(ge=0, le=100)] | None = None
    seats: Annotated[int, Field(ge=0, le=100)] | None = None
    """Seats taken (groups)."""
    helps: Annotated[int, Field(ge=0, le=100)] | None = None
    """Helps received (cuts)."""
    ends_at: UtcTime | None = None
    """When the group's or cut's window closes (time left = ends_at - issued_at)."""
    price: Annotated[Finite, Field(ge=0, le=1e9)] | None = None
    """The group price, or the cut's price reached so far."""
    coupon: Annotated[str, StringConstraints(max_length=64)] | None = None
    """The member's coupon code, once the group formed or the cut is done."""
    reason: ShortText = ""
    issued_at: UtcTime


UPLINK: dict[str, type[Message]] = {"social": SocialRequest}
DOWNLINK: tuple[type[Message], ...] = (SocialState,)
MODELS: list[type[Message]] = [SocialRequest, SocialState]
