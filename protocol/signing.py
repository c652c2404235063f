"""Canonical Ed25519 signing and verification of cloud messages (PROTOCOL.md, fixed).

The signature covers `json.dumps(obj_without_sig, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` encoded as UTF-8. Verification works on the object as received, so
nothing a receiver adds or normalises can change what was signed, and fields a newer gateway
added (which this build's envelopes do not know, and ignore) are covered all the same:
verify first, validate after.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel

from protocol import codec
from protocol.envelopes import PublicKey
from protocol.errors import SignatureError
from protocol.ids import parse_time, utcnow


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that are signed: the object without `sig`, keys sorted, no whitespace."""
    body = {k: v for k, v in obj.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"not base64: {exc}") from exc


def public_key_b64(key: Ed25519PublicKey) -> str:
    return b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(key: PublicKey) -> Ed25519PublicKey:
    """The Ed25519 key of a `PublicKey`; SignatureError when it is not 32 raw bytes."""
    raw = unb64(key.public_key)
    if len(raw) != 32:
        raise SignatureError(f"key {key.kid!r} is {len(raw)} bytes, not 32", key.kid)
    return Ed25519PublicKey.from_public_bytes(raw)


class SigningKey(Protocol):
    """What signs cloud messages: a `Signer`, or a holder that switches its key while the
    gateway runs (`cloud_gateway/security/live.LiveKeys`)."""

    @property
    def kid(self) -> str: ...

    @property
    def public(self) -> PublicKey: ...

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs objects with one Ed25519 key known to devices as `kid`."""

    kid: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, kid: str) -> Signer:
        return cls(kid, Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, kid: str, pem: bytes) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"key {kid!r} is not an Ed25519 private key", kid)
        return cls(kid, key)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public(self) -> PublicKey:
        return PublicKey(kid=self.kid, public_key=public_key_b64(self.private_key.public_key()))

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of `obj` with `kid` set and `sig` over its canonical form."""
        signed = {k: v for k, v in obj.items() if k != "sig"}
        signed["kid"] = self.kid
        signed["sig"] = b64(self.private_key.sign(canonical(signed)))
        return signed


@dataclass(slots=True)
class Verifier:
    """Checks signatures against pinned keys; the key set is bounded and replaceable.

    Each key may be limited to roles (`ROLES`, issue 14): a key the verifier holds without
    roles (one pinned in `trust.json` before key lists had roles) serves every role."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_public_keys(cls, keys: Iterable[PublicKey]) -> Verifier:
        verifier = cls()
        verifier.replace(keys)
        return verifier

    def replace(self, keys: Iterable[PublicKey]) -> None:
        loaded: dict[str, Ed25519PublicKey] = {}
        roles: dict[str, frozenset[str]] = {}
        for key in keys:
            loaded[key.kid] = load_public_key(key)
            if key.roles is not None:
                roles[key.kid] = frozenset(key.roles)
        self.keys = loaded
        self.roles = roles

    def verify(
        self, obj: dict[str, Any], *, role: str | None = None, now: datetime | None = None
    ) -> None:
        """Raise SignatureError unless `obj` is signed by a pinned key (of `role`, when
        given) and not expired."""
        kid, sig = obj.get("kid"), obj.get("sig")
        if not isinstance(kid, str) or not isinstance(sig, str):
            raise SignatureError("unsigned message: kid and sig are required")
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(f"unknown signing key {kid!r}", kid)
        if role is not None:
            allowed = self.roles.get(kid)
            if allowed is not None and role not in allowed:
                raise SignatureError(f"key {kid!r} may not sign {role}", kid)
        signature = unb64(sig)
        if len(signature) != 64:
            raise SignatureError(f"signature is {len(signature)} bytes, not 64", kid)
        try:
            key.verify(signature, canonical(obj))
        except InvalidSignature as exc:
            raise SignatureError(f"signature does not verify under key {kid!r}", kid) from exc
        expires = obj.get("expires_at")
        if not isinstance(expires, str):
            raise SignatureError("signed message has no expires_at", kid)
        try:
            expires_at = parse_time(expires)
        except ValueError as exc:
            raise SignatureError(f"expires_at is not RFC 3339: {exc}", kid) from exc
        if expires_at <= (now or utcnow()):
            raise SignatureError(f"message expired at {expires}", kid)


M = TypeVar("M", bound=BaseModel)


def decode_signed(
    payload: bytes,
    model: type[M],
    verifier: Verifier,
    *,
    max_compressed: int,
    role: str | None = None,
) -> tuple[M, tuple[str, ...]]:
    """A signed downlink message's bytes to its envelope and the paths of the fields this build
    does not know: bounded decode, then signature and expiry checked over the object as
    received (unknown fields included), then tolerant validation, which ignores them (see
    `codec.validate_tolerant`). Raises ProtocolError."""
    obj = codec.decode_object(payload, max_compressed=max_compressed)
    verifier.verify(obj, role=role)
    return codec.validate_tolerant(obj, model)
