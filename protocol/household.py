"""The household membership credential (issue 17): what the gateway signs so that a home's
devices can recognise each other on the LAN. Pure: a model, the TXT hint and the key
fingerprint, no I/O.

The gateway signs it with its `commands` key (`protocol.signing`); a device checks it with the
keys it pinned at provisioning. The gateway hands it out in a `grant` beside the household's
secret (`{"membership": ..., "household_secret": ...}`): the membership is shown to
authenticated peers in the LAN handshake (`agent.household.handshake`), the secret never
leaves the device it was issued to (the LAN sees only keyed hashes of it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from protocol.ids import format_time
from protocol.topics import DEVICE_ID_RE

HOUSEHOLD_ID_RE = r"^[a-z0-9][a-z0-9-]{2,63}$"
MemberRole = Literal["hub", "member", "thin", "appliance"]
"""hub: the household's coordinator when present; member: a full agent, may be elected;
thin: ranks through the coordinator, never elected; appliance: only reports consumables."""
MEMBER_ROLES: tuple[MemberRole, ...] = ("hub", "member", "thin", "appliance")
SIGNING_ROLE = "commands"
"""The gateway key role a membership must be signed with."""
KeyB64 = Annotated[str, StringConstraints(min_length=40, max_length=64)]


class Membership(BaseModel):
    """A device's membership of one household, signed by the gateway (`kid`, `sig`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    kind: Literal["household_membership"] = "household_membership"
    household_id: Annotated[str, StringConstraints(pattern=HOUSEHOLD_ID_RE)]
    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_RE.pattern)]
    device_key: KeyB64
    """The device's raw Ed25519 public key, standard base64 (its LAN identity)."""
    roles: Annotated[list[MemberRole], Field(min_length=1, max_length=len(MEMBER_ROLES))]
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    kid: str | None = None
    sig: str | None = None

    def to_wire(self) -> dict[str, object]:
        body = self.model_dump(mode="json", exclude_none=True)
        body["issued_at"] = format_time(self.issued_at)
        body["expires_at"] = format_time(self.expires_at)
        return body


def secret_bytes(secret_b64: str) -> bytes:
    """The household secret's bytes; ValueError when it is not base64 of 16..48 bytes."""
    try:
        raw = base64.b64decode(secret_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"household secret is not base64: {exc}") from exc
    if not 16 <= len(raw) <= 48:
        raise ValueError(f"household secret is {len(raw)} bytes, not 16..48")
    return raw


def household_hint(secret: bytes) -> str:
    """What a device advertises so that its household's members find it: a keyed hash that
    says nothing of the household id to anyone without the secret (16 hex characters)."""
    return hmac.new(secret, b"edgemart-household-hint-v1", hashlib.sha256).hexdigest()[:16]


def advert_proof(secret: bytes, fingerprint: str, role: str, port: int) -> str:
    """The TXT proof that the advertiser holds the household secret (32 hex characters)."""
    msg = f"edgemart-advert-v1|{fingerprint}|{role}|{port}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:32]


def key_fingerprint(device_key_b64: str) -> str:
    """A device key's fingerprint: the first 16 bytes of SHA-256 of its raw bytes, hex."""
    raw = base64.b64decode(device_key_b64)
    return hashlib.sha256(raw).hexdigest()[:32]
