"""A device's household credentials: its Ed25519 LAN key (made in the data dir on first use)
and the gateway-signed membership, checked against the keys the device pinned. Blocking file
I/O in `load_key` and `read_membership`: call them from a thread."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from agent.errors import AgentError
from daemonkit.files import write_durable
from protocol.errors import SignatureError
from protocol.household import (
    SIGNING_ROLE,
    Membership,
    advert_proof,
    household_hint,
    key_fingerprint,
    secret_bytes,
)
from protocol.ids import utcnow
from protocol.signing import Signer, Verifier

log = logging.getLogger(__name__)
KEY_FILE = Path("household") / "lan.key"
MEMBERSHIP_FILE = Path("household") / "membership.json"


class MembershipError(AgentError):
    """A membership credential that does not hold: names why (`reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"membership refused: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a device proves its membership with: the credential and the key it names."""

    membership: Membership
    wire: dict[str, Any]
    """The credential as the gateway signed it (shown to an authenticated peer)."""
    key: Signer
    secret: bytes
    """The household's secret (from the grant): keys the TXT hint and proof; never sent."""

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.membership.device_key)

    @property
    def hint(self) -> str:
        return household_hint(self.secret)

    @property
    def role(self) -> str:
        """The role this device advertises: the first of hub, member, thin, appliance it has."""
        for role in ("hub", "member", "thin", "appliance"):
            if role in self.membership.roles:
                return role
        return self.membership.roles[0]

    def proof(self, port: int) -> str:
        return advert_proof(self.secret, self.fingerprint, self.role, port)


def load_key(data_dir: Path) -> Signer:
    """The device's LAN identity key: `DATA_DIR/household/lan.key`, made on first use (the
    provisioning key is EC P-256 for TLS, not Ed25519, so the LAN has its own)."""
    path = data_dir / KEY_FILE
    if path.exists():
        return Signer.from_pem("lan", path.read_bytes())
    signer = Signer("lan", Ed25519PrivateKey.generate())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_durable(path, signer.to_pem(), mode=0o600)
    log.info("made the household LAN key %s", path)
    return signer


def check_membership(
    obj: Any, verifier: Verifier, *, now: datetime | None = None, household_id: str | None = None
) -> Membership:
    """A membership object from anywhere (file, peer) checked: the gateway's signature, not
    expired, well formed, of `household_id` when given. Raises MembershipError."""
    if not isinstance(obj, dict):
        raise MembershipError("not a JSON object")
    try:
        verifier.verify(obj, role=SIGNING_ROLE, now=now or utcnow())
    except SignatureError as exc:
        raise MembershipError(str(exc)) from exc
    try:
        membership = Membership.model_validate(obj)
        key_fingerprint(membership.device_key)
    except (ValidationError, ValueError) as exc:
        raise MembershipError(f"malformed: {exc}") from exc
    if household_id is not None and membership.household_id != household_id:
        raise MembershipError("another household")
    return membership


def credentials(grant: Any, key: Signer, verifier: Verifier) -> Credentials:
    """Own credentials from the gateway's grant (`{"membership", "household_secret"}`): the
    membership must hold and name this device's key."""
    if not isinstance(grant, dict) or not isinstance(grant.get("membership"), dict):
        raise MembershipError("the grant has no membership")
    wire = grant["membership"]
    membership = check_membership(wire, verifier)
    if membership.device_key != key.public.public_key:
        raise MembershipError("the membership names another device key")
    try:
        secret = secret_bytes(str(grant.get("household_secret", "")))
    except ValueError as exc:
        raise MembershipError(str(exc)) from exc
    return Credentials(membership, wire, key, secret)


def read_membership(data_dir: Path) -> dict[str, Any] | None:
    """The stored grant (`DATA_DIR/household/membership.json`: membership and the
    household's secret, 0600), or None."""
    path = data_dir / MEMBERSHIP_FILE
    if not path.exists():
        return None
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else None


def write_membership(data_dir: Path, wire: dict[str, Any]) -> None:
    path = data_dir / MEMBERSHIP_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_durable(path, json.dumps(wire, sort_keys=True).encode(), mode=0o600)
