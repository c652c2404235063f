"""Issuing household memberships: the credential a device shows its household's peers on the
LAN (`protocol.household.Membership`), signed with the gateway's key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.households import create_invite, record_member, redeem_invite
from cloud_gateway.errors import InviteRefused
from protocol.household import HOUSEHOLD_ID_RE, MEMBER_ROLES, MemberRole, Membership
from protocol.ids import format_time
from protocol.topics import DEVICE_ID_RE

HOUSEHOLD_PATTERN = HOUSEHOLD_ID_RE


class SignsObjects(Protocol):
    """The gateway's active key (`security.live.LiveKeys`, or a `protocol.signing.Signer`)."""

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]: ...


def _raw_ed25519(text: str) -> str:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not standard base64: {exc}") from exc
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, not the 32 of an Ed25519 public key")
    return text


DeviceKey = Annotated[
    str, StringConstraints(min_length=40, max_length=64), AfterValidator(_raw_ed25519)
]
"""A device's LAN key: its raw Ed25519 public key, standard base64."""


class MemberIn(BaseModel):
    """`POST /v1/households/{id}/members`: the device, its LAN key and its roles."""

    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_RE.pattern)]
    device_key: DeviceKey
    """The device's raw Ed25519 public key (its LAN key), standard base64."""
    roles: Annotated[list[MemberRole], Field(min_length=1, max_length=len(MEMBER_ROLES))]
    ttl_days: int = Field(default=365, ge=1, le=3650)


class InviteIn(BaseModel):
    """`POST /v1/households/{id}/invites`: the roles the invited device will hold, and how long
    the code may wait to be used."""

    model_config = ConfigDict(extra="forbid")

    roles: Annotated[list[MemberRole], Field(min_length=1, max_length=len(MEMBER_ROLES))]
    ttl_hours: int = Field(default=72, ge=1, le=720)


class JoinIn(BaseModel):
    """The optional `household` of `POST /v1/provision`: an invite's code and the device's
    LAN key (its raw Ed25519 public key, standard base64)."""

    model_config = ConfigDict(extra="forbid")

    invite: Annotated[str, StringConstraints(min_length=16, max_length=64)]
    device_key: DeviceKey


def invite_hash(code: str) -> str:
    """What the gateway keeps of an invite code."""
    return hashlib.sha256(code.encode()).hexdigest()


class HouseholdDesk:
    """`await issue(...)` records a member and answers its signed credential."""

    def __init__(
        self,
        db: Backend[Session],
        signer: SignsObjects,
        clock: Callable[[], datetime],
        counters: Counter[str] | None = None,
    ) -> None:
        self._db = db
        self._signer = signer
        self._clock = clock
        self._counters = counters if counters is not None else Counter()

    async def invite(self, household_id: str, spec: InviteIn, who: str) -> dict[str, Any]:
        """A one-time invite to `household_id` (audited): its code, shown once (the gateway
        keeps its hash), for the owner's app to hand the new device with its claim."""
        code = secrets.token_urlsafe(24)
        expires = self._clock() + timedelta(hours=spec.ttl_hours)
        await self._db.call(
            create_invite,
            household_id,
            invite_hash(code),
            roles=list(spec.roles),
            expires_at=expires,
            who=who,
        )
        self._counters["household_invites"] += 1
        return {
            "household_id": household_id,
            "invite": code,
            "roles": list(spec.roles),
            "expires_at": format_time(expires),
        }

    async def join(self, device_id: str, spec: JoinIn) -> dict[str, Any]:
        """Spend `spec.invite` for `device_id` (a device being provisioned): its signed
        membership grant, as `issue` answers; `InviteRefused` for an unknown, used or expired
        invite (counted)."""
        found = await self._db.call(
            redeem_invite, invite_hash(spec.invite), device_id, self._clock()
        )
        if isinstance(found, str):
            self._counters["household_invites_refused"] += 1
            raise InviteRefused(found)
        household_id, roles = found
        member = MemberIn.model_validate(
            {"device_id": device_id, "device_key": spec.device_key, "roles": roles}
        )
        self._counters["household_invites_redeemed"] += 1
        return await self.issue(household_id, member, f"invite:{device_id}")

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
