"""Protocol figures: batch codec throughput vs plain json, signature checks vs raw Ed25519."""

from __future__ import annotations

import json
from datetime import timedelta

from bench.record import Record, rate
from protocol import codec
from protocol.envelopes import Batch, Offer, OfferBundle, Signal
from protocol.ids import new_id, utcnow
from protocol.signing import Signer, Verifier, canonical, unb64


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


def run() -> list[Record]:
    batch = _batch(500)
    payload = codec.encode(batch, compress=None)
    plain = json.dumps(batch.model_dump(mode="json")).encode()
    decode_rate = rate(lambda: codec.decode(payload, Batch, allow_zlib=True), 500)
    json_rate = rate(lambda: json.loads(plain), 500)

    signer = Signer.generate("bench")
    verifier = Verifier.from_public_keys([signer.public])
    now = utcnow()
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
    verify_rate = rate(lambda: verifier.verify(bundle), 1)
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
            "20-offer bundle: canonical form + signature + expiry",
        ),
    ]
