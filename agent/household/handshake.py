"""The LAN handshake, pure: both sides prove they hold a gateway-signed membership of the same
household and the private key it names, before either shows anything else.

1. client -> coordinator `hello {nonce_c}`; the coordinator answers `{membership, nonce_s,
   proof}` where `proof` signs (`server`, nonce_c, nonce_s). The client checks it and learns
   nothing else; a spoofed coordinator got a random nonce and nothing more.
2. client -> coordinator `auth {membership, nonce_s, proof}` where `proof` signs (`client`,
   nonce_s, nonce_c, coordinator fingerprint); the coordinator answers a session token.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.signing import Signer

NONCE_BYTES = 24
NONCE_LEN = 32  # base64 of 24 bytes, url-safe


def new_nonce() -> str:
    return secrets.token_urlsafe(NONCE_BYTES)


def _message(purpose: str, parts: tuple[str, ...]) -> bytes:
    return "|".join(("edgemart-lan-v1", purpose, *parts)).encode()


def prove(key: Signer, purpose: str, *parts: str) -> str:
    """Sign (`purpose`, parts) with the device's LAN key: base64 of the Ed25519 signature."""
    return base64.b64encode(key.private_key.sign(_message(purpose, parts))).decode()


def check(device_key_b64: str, proof: object, purpose: str, *parts: str) -> bool:
    """Whether `proof` signs (`purpose`, parts) under `device_key_b64`; False for anything
    malformed (a peer's bytes never raise here)."""
    if not isinstance(proof, str) or len(proof) > 200:
        return False
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(device_key_b64))
        key.verify(base64.b64decode(proof, validate=True), _message(purpose, parts))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def valid_nonce(value: object) -> bool:
    return isinstance(value, str) and len(value) == NONCE_LEN and value.isascii()
