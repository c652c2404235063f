"""Canonical Ed25519 signing: what PROTOCOL.md fixes, and that any change breaks the signature."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.envelopes import Offer, OfferBundle
from protocol.errors import SignatureError
from protocol.ids import new_id, utcnow
from protocol.signing import Signer, Verifier, canonical

SIGNER = Signer.generate("k-test")
VERIFIER = Verifier.from_public_keys([SIGNER.public])


def _bundle(title: str = "Filter -30%", price: float = 199.0) -> dict[str, object]:
    now = utcnow()
    offer = Offer(
        id="offer-1",
        campaign_id="camp-1",
        type="replenishment",
        title=title,
        category="purifier_filter",
        price=price,
        discount=0.3,
        surfaces=["tv_home_banner"],
        starts_at=now - timedelta(hours=1),
        expires_at=now + timedelta(days=3),
    )
    bundle = OfferBundle(
        id=new_id(), issued_at=now, expires_at=now + timedelta(hours=1), offers=[offer]
    )
    return SIGNER.sign(bundle.to_wire())


def test_signature_is_exactly_the_documented_canonical_form() -> None:
    signed = _bundle(title="净水器滤芯 特价")
    body = {k: v for k, v in signed.items() if k != "sig"}
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical(signed) == expected.encode("utf-8")
    raw = base64.b64decode(SIGNER.public.public_key)
    Ed25519PublicKey.from_public_bytes(raw).verify(
        base64.b64decode(signed["sig"]),  # type: ignore[arg-type]
        expected.encode("utf-8"),
    )
    VERIFIER.verify(signed)
    assert codec.validate(signed, OfferBundle).kid == "k-test"


def test_verifies_after_a_trip_through_the_wire() -> None:
    signed = _bundle()
    VERIFIER.verify(codec.decode_object(codec.encode_dict(signed)))


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_changed_byte_fails_verification(data: st.DataObject) -> None:
    signed = _bundle()
    wire = bytearray(codec.encode_dict(signed))
    index = data.draw(st.integers(0, len(wire) - 1))
    flip = data.draw(st.integers(1, 255))
    wire[index] ^= flip
    try:
        obj = json.loads(wire.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return  # not even JSON: refused earlier by the codec
    if not isinstance(obj, dict) or obj == signed:
        return  # e.g. whitespace-equivalent change: the same object, still authentic
    with pytest.raises(SignatureError):
        VERIFIER.verify(obj)


@given(st.sampled_from(["title", "price", "expires_at", "id", "kid"]))
def test_any_changed_field_fails(field: str) -> None:
    signed = _bundle()
    tampered = json.loads(json.dumps(signed))
    if field in ("title", "price"):
        tampered["offers"][0][field] = "Free TV" if field == "title" else 0.01
    elif field == "expires_at":
        tampered["expires_at"] = "2099-01-01T00:00:00.000Z"
    else:
        tampered[field] = "other"
    with pytest.raises(SignatureError):
        VERIFIER.verify(tampered)


def test_unsigned_unknown_key_and_expired_are_refused() -> None:
    signed = _bundle()
    unsigned = {k: v for k, v in signed.items() if k not in ("sig", "kid")}
    with pytest.raises(SignatureError, match="unsigned"):
        VERIFIER.verify(unsigned)
    other = Signer.generate("k-other").sign(unsigned)
    with pytest.raises(SignatureError, match="unknown signing key"):
        VERIFIER.verify(other)
    impostor = Signer("k-test", Signer.generate("x").private_key).sign(unsigned)
    with pytest.raises(SignatureError, match="does not verify"):
        VERIFIER.verify(impostor)
    later = datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(SignatureError, match="expired"):
        VERIFIER.verify(signed, now=later)


def test_key_round_trips_through_pem() -> None:
    again = Signer.from_pem("k-test", SIGNER.to_pem())
    VERIFIER.verify(again.sign({"v": 1, "expires_at": "2099-01-01T00:00:00.000Z"}))
