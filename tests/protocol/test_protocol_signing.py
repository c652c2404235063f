"""Canonical Ed25519 signing: what PROTOCOL.md fixes, and that any change breaks the signature."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.envelopes import Command, Offer, OfferBundle
from protocol.errors import MalformedPayload, PayloadTooLarge, SignatureError
from protocol.ids import new_id, utcnow
from protocol.signing import Signer, Verifier, canonical, decode_signed

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
    sig = signed["sig"]
    assert isinstance(sig, str)
    Ed25519PublicKey.from_public_bytes(raw).verify(
        base64.b64decode(sig),
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


# ------------------------------------------- fields a newer gateway added (tolerant downlink)

GOLDEN = Signer("k-golden", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
GOLDEN_COMMAND = {
    "v": 1,
    "id": "cmd-1",
    "device_id": "tv-0001",
    "kind": "forget",
    "args": {},
    "issued_at": "2026-01-01T00:00:00Z",
    "expires_at": "2099-01-01T00:00:00Z",
    "note": "净水器",  # not a Command field: added by a newer gateway
    "rollout": {"wave": 2, "tags": ["a", None, 1.5]},
}
GOLDEN_SIG = (
    "EWZiLTlN8ANiXS/qeXqOT5cbc4OmRyxag6xE5mCufkM2mOJ0uLoPIU43wVS+2w3jZfbHo29t3YkwWiWeecuhBw=="
)


def test_signatures_made_before_stay_valid_unknown_fields_included() -> None:
    """The canonical form is fixed (PROTOCOL.md): a signature made by an earlier release over an
    object with fields this build does not know still verifies, and the decoded command keeps
    its known fields."""
    signed = GOLDEN.sign(GOLDEN_COMMAND)
    assert signed["sig"] == GOLDEN_SIG  # Ed25519 is deterministic: the bytes signed are fixed
    verifier = Verifier.from_public_keys([GOLDEN.public])
    command, unknown = decode_signed(
        codec.encode_dict(signed), Command, verifier, max_compressed=16 * 1024
    )
    assert (command.id, command.device_id, command.kind, command.kid) == (
        "cmd-1",
        "tv-0001",
        "forget",
        "k-golden",
    )
    assert sorted(unknown) == ["note", "rollout"]


def _command_with(**extra: object) -> dict[str, object]:
    now = utcnow()
    command = Command(
        id=new_id(),
        device_id="tv-0001",
        kind="forget",
        issued_at=now,
        expires_at=now + timedelta(hours=1),
    )
    return SIGNER.sign({**command.to_wire(), **extra})


def _decode(obj: dict[str, object]) -> tuple[Command, tuple[str, ...]]:
    return decode_signed(codec.encode_dict(obj), Command, VERIFIER, max_compressed=16 * 1024)


def test_unknown_fields_are_covered_by_the_signature() -> None:
    """Verified over the object as received: an unknown field changed, dropped or added after
    signing fails, so a device ignoring it never ignores something forged."""
    signed = _command_with(ttl_s=30, scope={"tables": ["signals"]})
    command, unknown = _decode(signed)
    assert command.kind == "forget"
    assert sorted(unknown) == ["scope", "ttl_s"]
    changed = {**signed, "ttl_s": 31}
    nested = {**signed, "scope": {"tables": ["signals", "claims"]}}
    dropped = {k: v for k, v in signed.items() if k != "ttl_s"}
    added = {**signed, "urgent": True}
    for forged in (changed, nested, dropped, added):
        with pytest.raises(SignatureError, match="does not verify"):
            _decode(forged)


def test_unknown_fields_do_not_lift_the_size_and_depth_bounds() -> None:
    too_big = _command_with(padding="x" * (16 * 1024))
    with pytest.raises(PayloadTooLarge):
        _decode(too_big)
    deep: object = 1
    for _ in range(codec.MAX_DEPTH):
        deep = [deep]
    with pytest.raises(MalformedPayload, match="nests deeper"):
        _decode(_command_with(future=deep))
