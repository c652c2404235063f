"""An agent that pins an offline root (issue 14): it takes root-signed key lists at higher
versions only, keeps them across restarts, and a revocation takes off the device the offers
and the running model the revoked key signed."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent.model.scoring import load_model
from protocol import codec
from protocol.envelopes import KeyList, OfferBundle, PublicKey, RootChange
from protocol.ids import utcnow
from protocol.signing import Signer
from tests.support.builders import make_offer, write_model
from tests.support.local_device import running_device

ROOT = Signer.generate("root-1")
K2 = Signer.generate("k2")
DAY = timedelta(days=1)


def key_list(version: int, keys: list[PublicKey], **kw: Any) -> bytes:
    now = utcnow()
    body = KeyList(
        version=version, keys=keys, issued_at=now, expires_at=now + timedelta(days=1), **kw
    )
    return codec.dumps(ROOT.sign(body.to_wire()))


async def test_a_revocation_drops_what_the_key_signed_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    async with running_device(tmp_path, root=ROOT) as device:
        agent, link = device.agent, device.transports.last
        k1 = device.signer
        await link.deliver("keys", key_list(1, [k1.public, K2.public]))
        assert agent.parts.trust.to_json()["keys_version"] == 1
        await link.deliver("offers", device.bundle([("by-k1", 0.1, 50)]))
        assert agent.parts.offers.get("by-k1") is not None
        path, manifest = await asyncio.to_thread(
            write_model, tmp_path, ["offer.discount"], [2.0], version=7
        )
        model = await asyncio.to_thread(load_model, path, k1.sign(manifest))
        agent.parts.slot.swap(model)
        assert agent.model_version == 7

        await link.deliver("keys", key_list(2, [K2.public], revoked=[k1.kid]))
        assert agent.parts.offers.get("by-k1") is None  # dropped from the device
        assert agent.counters["offers_dropped_revoked"] == 1
        assert agent.model_version != 7  # the model it signed no longer runs
        await link.deliver("offers", device.bundle([("again", 0.1, 50)]))
        assert agent.parts.offers.get("again") is None  # refused from now on
        # an older list (genuinely signed) cannot bring the key back
        await link.deliver("keys", key_list(1, [k1.public, K2.public]))
        assert agent.counters["keylists_rejected"] == 1
        assert agent.parts.trust.to_json()["keys"] == ["k2"]
        # a list signed by an online key, not the root, changes nothing either
        forged = KeyList(
            version=9, keys=[k1.public], issued_at=utcnow(), expires_at=utcnow() + timedelta(1)
        )
        await link.deliver("keys", codec.dumps(K2.sign(forged.to_wire())))
        assert agent.counters["keylists_rejected"] == 2
    async with running_device(tmp_path, root=ROOT) as device:
        trust = device.agent.parts.trust.to_json()
        assert (trust["keys_version"], trust["keys"]) == (2, ["k2"])
        assert device.agent.parts.offers.get("by-k1") is None


def introduced(by: Signer, **kw: Any) -> bytes:
    """A root-signed list whose chain introduces ROOT with a root change signed by `by`."""
    now = utcnow()
    intro = RootChange(generation=1, root=ROOT.public, issued_at=now, expires_at=now + DAY)
    body = KeyList(version=1, issued_at=now, expires_at=now + DAY, **kw).to_wire()
    body["root_chain"] = [by.sign(intro.to_wire())]
    return codec.dumps(ROOT.sign(body))


async def test_a_device_provisioned_before_roots_is_introduced_to_one_by_its_pinned_key(
    tmp_path: Path,
) -> None:
    async with running_device(tmp_path) as device:  # trust.json: one key, no root
        agent, link = device.agent, device.transports.last
        assert agent.parts.trust.stale() is None  # nothing to be fresh about yet
        # a root introduced by a key the device does not pin changes nothing
        await link.deliver("keys", introduced(K2, keys=[K2.public]))
        assert agent.counters["keylists_ignored"] == 1
        assert agent.parts.trust.to_json()["rooted"] is False
        # introduced by the gateway's pinned key: taken, and the gateway can now rotate
        await link.deliver(
            "keys", introduced(device.signer, keys=[device.signer.public, K2.public])
        )
        assert agent.parts.trust.to_json()["root"] == ROOT.kid
        rotated = OfferBundle(
            id="b-k2", issued_at=utcnow(), expires_at=utcnow() + DAY, offers=[make_offer("k2-1")]
        )
        await link.deliver("offers", codec.dumps(K2.sign(rotated.to_wire())))
        assert agent.parts.offers.get("k2-1") is not None
        assert agent.parts.trust.stale() == "no_timestamp"  # rooted now: freshness counts
