"""Protocol figures: batch codec throughput vs plain json, signature checks vs raw Ed25519."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from bench.record import Record, rate
from protocol import codec
from protocol.envelopes import Batch, KeyList, Offer, OfferBundle, Signal
from protocol.ids import new_id, utcnow
from protocol.signing import Signer, Verifier, canonical, unb64
from protocol.trust import TrustState, accept_key_list


def _batch(n: int) -> Batch:
    now = utcnow()
    signals = [
        Signal(
            id=new_id(),
            kind="content_view",
            at=now,
            attrs={"genre": "drama", "category": "tv_streaming", "seconds": 1200},
        )
        for _ in range(n)
    ]
    return Batch(device_id="tv-0001", seq=1, sent_at=now, agent_version="0.1.0", signals=signals)


def _key_list_verifier(signer: Signer, now: datetime) -> Verifier:
    """A device's verifier as it is in the field: keys from a root-signed list, with roles."""
    root = Signer.generate("root")
    others = [Signer.generate(f"k{i}").public for i in range(3)]
    listed = [signer.public.model_copy(update={"roles": ["offers", "acks"]}), *others]
    key_list = KeyList(
        version=2, keys=listed, issued_at=now, expires_at=now + timedelta(days=1)
    ).to_wire()
    state = TrustState(root.public, 1, 1, ())
    taken = accept_key_list(state, root.sign(key_list), now)
    return Verifier.from_public_keys(taken.keys)


def run() -> list[Record]:
    batch = _batch(500)
    payload = codec.encode(batch, compress=None)
    plain = json.dumps(batch.model_dump(mode="json")).encode()
    decode_rate = rate(lambda: codec.decode(payload, Batch, allow_zlib=True), 500)
    json_rate = rate(lambda: json.loads(plain), 500)

    signer = Signer.generate("bench")
    now = utcnow()
    verifier = _key_list_verifier(signer, now)
    offers = [
        Offer(
            id=f"o{i}",
            campaign_id="c1",
            type="coupon",
            title="10% off",
            category="groceries",
            surfaces=["tv_home_banner"],
            starts_at=now,
            expires_at=now + timedelta(days=1),
        )
        for i in range(20)
    ]
    bundle = signer.sign(
        OfferBundle(
            id=new_id(), issued_at=now, expires_at=now + timedelta(hours=1), offers=offers
        ).to_wire()
    )
    key = verifier.keys["bench"]
    sig = unb64(bundle["sig"])
    verify_rate = rate(lambda: verifier.verify(bundle, role="offers"), 1)
    raw_rate = rate(lambda: key.verify(sig, canonical(bundle)), 1)
    return [
        Record(
            "batch_decode_signals_per_s",
            decode_rate,
            "signals/s",
            "json.loads of the same batch (no validation, no zlib)",
            json_rate,
            "zlib + bounded decode + pydantic validation, 500-signal batch",
        ),
        Record(
            "bundle_verify_per_s",
            verify_rate,
            "bundles/s",
            "raw Ed25519 verify of the same canonical bytes",
            raw_rate,
            "20-offer bundle: canonical form + signature + expiry + the key's role, its key"
            " from a root-signed key list of 4 keys",
        ),
    ]
