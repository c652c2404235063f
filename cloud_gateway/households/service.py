"""Issuing household memberships: the credential a device shows its household's peers on the
LAN (`protocol.household.Membership`), signed with the gateway's key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.households import record_member
from protocol.household import HOUSEHOLD_ID_RE, MEMBER_ROLES, MemberRole, Membership
from protocol.topics import DEVICE_ID_RE

HOUSEHOLD_PATTERN = HOUSEHOLD_ID_RE


class SignsObjects(Protocol):
    """The gateway's active key (`security.live.LiveKeys`, or a `protocol.signing.Signer`)."""

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]: ...


class MemberIn(BaseModel):
    """`POST /v1/households/{id}/members`: the device, its LAN key and its roles."""

    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_RE.pattern)]
    device_key: Annotated[str, StringConstraints(min_length=40, max_length=64)]
    """The device's raw Ed25519 public key (its LAN key), standard base64."""
    roles: Annotated[list[MemberRole], Field(min_length=1, max_length=len(MEMBER_ROLES))]
    ttl_days: int = Field(default=365, ge=1, le=3650)


class HouseholdDesk:
    """`await issue(...)` records a member and answers its signed credential."""

    def __init__(
        self, db: Backend[Session], signer: SignsObjects, clock: Callable[[], datetime]
    ) -> None:
        self._db = db
        self._signer = signer
        self._clock = clock

    async def issue(self, household_id: str, member: MemberIn, who: str) -> dict[str, Any]:
        now = self._clock()
        expires = now + timedelta(days=member.ttl_days)
        secret = await self._db.call(
            record_member,
            household_id,
            member.device_id,
            device_key=member.device_key,
            roles=list(member.roles),
            expires_at=expires,
            who=who,
        )
        membership = Membership(
            household_id=household_id,
            device_id=member.device_id,
            device_key=member.device_key,
            roles=list(member.roles),
            issued_at=now,
            expires_at=expires,
        )
        signed = self._signer.sign(membership.to_wire())
        return {"membership": signed, "household_secret": secret}
