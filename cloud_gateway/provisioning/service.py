"""Provisioning a device: a claim credential and the device's CSR in, its X.509 client
certificate, the fleet CA, the trust file and the topic root out; revocation and the CRL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field

from cloud_gateway.db import provisioning as rows
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.errors import ClaimRefused, InvalidInput
from cloud_gateway.households.service import JoinIn
from cloud_gateway.provisioning.ca import FleetCa, load_or_create, parse_csr
from cloud_gateway.provisioning.passwords import mosquitto_hash, new_password, write_password_file
from protocol.topics import DEVICE_ID_RE

CLAIM_PREFIX = "emc_"
NOT_A_CLAIM = ("unknown claim credential", "claim credential revoked")
MAX_GROUP = 500
"""Redemptions committed in one transaction at most."""
MAX_CLAIM_LEN = 256


def claim_hash(claim: str) -> str:
    return hashlib.sha256(claim.encode("utf-8")).hexdigest()


def new_claim() -> str:
    """A fresh claim credential (printed once; only its hash is kept)."""
    return CLAIM_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Issued:
    """What a provisioned device keeps: its certificate, the CA, the trust file, the root."""

    certificate: str
    ca: str
    trust: dict[str, Any]
    topic_root: str

    def to_json(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "ca": self.ca,
            "trust": self.trust,
            "topic_root": self.topic_root,
        }


class Provisioner:
    """Redeems claim credentials (the gateway's `POST /v1/provision`)."""

    def __init__(
        self,
        backend: Backend[Session],
        data_dir: Path,
        trust_path: Path,
        topic_root: str,
        counters: Counter[str],
    ) -> None:
        self._db = backend
        self._data_dir = data_dir
        self._trust_path = trust_path
        self._topic_root = topic_root
        self._counters = counters
        self._ca: FleetCa | None = None
        self._trust: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._waiting: list[tuple[rows.Redemption, asyncio.Future[str | None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _loaded(self) -> tuple[FleetCa, dict[str, Any]]:
        async with self._lock:
            if self._ca is None or self._trust is None:
                self._ca = await asyncio.to_thread(load_or_create, self._data_dir)
                text = await asyncio.to_thread(self._trust_path.read_text)

                self._trust = json.loads(text)
            return self._ca, self._trust

    async def provision(self, claim: str, device_id: str, csr_pem: str) -> Issued:
        """Issue `device_id`'s certificate over the key of its CSR, or `ClaimRefused`."""
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise InvalidInput(f"device_id {device_id!r} is not a device id")
        if not claim or len(claim) > MAX_CLAIM_LEN:
            self._counters["provision_refused"] += 1
            raise ClaimRefused("unknown claim credential", known=False)
        public_key = parse_csr(csr_pem, device_id)
        ca, trust = await self._loaded()
        cert = ca.issue(device_id, public_key)
        reason = await self._redeem((claim_hash(claim), device_id, cert.serial_number))
        if reason is not None:
            self._counters["provision_refused"] += 1
            # an unknown or revoked claim is 401; a known one misused (409) is what is audited
            raise ClaimRefused(reason, known=reason not in NOT_A_CLAIM)
        self._counters["provisioned"] += 1
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return Issued(pem, ca.cert_pem, trust, self._topic_root)

    async def _redeem(self, item: rows.Redemption) -> str | None:
        """Group commit: the redemptions that arrive while one transaction runs go together
        in the next (a crowd provisioning at once costs one commit per group, not each)."""
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._flusher is None or self._flusher.done():
            # its own task: a caller that goes away does not strand the others' redemptions
            self._flusher = asyncio.create_task(self._flush(), name="provision-commit")
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            try:
                reasons = await self._db.call(
                    rows.redeem_many, [item for item, _ in group], "provisioning"
                )
            except Exception as exc:  # noqa: BLE001 - handed to every waiter, who raises it
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), reason in zip(group, reasons, strict=True):
                if not done.done():
                    done.set_result(reason)


def create_batch(store: Session, batch_id: str, size: int, who: str) -> str:
    """A claim credential for a production batch of `size` devices (blocking: CLIs)."""
    if size < 1:
        raise InvalidInput(f"a batch holds at least one device, not {size}")
    claim = new_claim()
    rows.add_batch(store, batch_id, claim_hash(claim), size, who)
    return claim


def revoke(store: Session, data_dir: Path, device_id: str, who: str) -> Path | None:
    """Revoke a device's certificate and rewrite the CRL (blocking); None when it has none.
    The broker refuses the device at its next connect once it read the new CRL."""
    if not rows.revoke_device(store, device_id, who):
        return None
    return write_crl(store, data_dir)


def write_crl(store: Session, data_dir: Path) -> Path:
    """Rewrite `DATA_DIR/fleet-ca/crl.pem` from the database (blocking)."""
    return load_or_create(data_dir).write_crl(rows.revoked_serials(store))


class ProvisionIn(BaseModel):
    """Body of `POST /v1/provision` (the claim credential rides in `Authorization: Claim ...`)."""

    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[str, Field(max_length=64)]
    csr: Annotated[str, Field(max_length=8192)]
    """The device's PEM certificate request (CN = the device id, its own EC P-256 key)."""
    household: JoinIn | None = None
    """A household invite to redeem now (issue 17): the answer then carries the device's
    signed membership (`household`), or why the invite was refused (`household_refused`)."""


def issue_password(store: Session, device_id: str, password_file: Path, who: str) -> str:
    """A new broker password for `device_id` (printed once; its Mosquitto hash stored and
    audited) and the broker's password file rewritten (blocking)."""
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise InvalidInput(f"device id {device_id!r} is not a device id")
    password = new_password()
    rows.set_password(store, device_id, mosquitto_hash(password), who)
    write_password_file(password_file, rows.password_hashes(store))
    return password


def revoke_password(store: Session, device_id: str, password_file: Path, who: str) -> bool:
    """Drop the device's broker password and rewrite the password file (blocking)."""
    if not rows.drop_password(store, device_id, who):
        return False
    write_password_file(password_file, rows.password_hashes(store))
    return True
