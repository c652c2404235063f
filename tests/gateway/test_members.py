"""Members, tiers and points on both backends (issue 19): the ledger is exact under a
redelivered outcome (one credit), a repeated request, a spend past the balance and an
erasure (the person goes, every total stays); the device's status is signed and verifies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from cloud_gateway.db import members as sql
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.ingest import store_batch_detail, store_batches
from cloud_gateway.errors import Conflict, NotFound
from cloud_gateway.members.ledger import tier_figures
from cloud_gateway.members.service import EntryIn, LinkIn, MemberDesk, MemberIn, RuleIn
from cloud_gateway.runtime.wiring import Wiring
from protocol import codec
from protocol.ids import utcnow
from protocol.members import MemberStatus, tier_of
from protocol.signing import Signer, Verifier
from protocol.topics import Topics
from tests.support.builders import make_batch


class Sent:
    """What the desk published: topic -> last payload (retained semantics)."""

    def __init__(self) -> None:
        self.last: dict[str, bytes] = {}

    async def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        assert retain
        self.last[topic] = payload


def _status(sent: Sent, topics: Topics, device_id: str, verifier: Verifier) -> MemberStatus:
    obj = codec.decode_object(sent.last[topics.member(device_id)])
    verifier.verify(obj, role="commands")
    return MemberStatus.model_validate(obj)


async def test_ledger_exact_under_redelivery_spend_and_erasure(
    make_backend: Callable[[], Backend[Session]],
) -> None:
    signer = Signer.generate("k1")
    verifier = Verifier.from_public_keys([signer.public])
    topics, sent = Topics(), Sent()
    backend = await make_backend().open()
    try:
        desk = MemberDesk(Wiring(backend, signer, topics, sent, Counter()))
        await desk.create(MemberIn(id="m-ann", household_id="hh-1"), "token:ops")
        await desk.create(MemberIn(id="m-bob"), "token:ops")
        with pytest.raises(Conflict):
            await desk.create(MemberIn(id="m-ann"), "token:ops")
        await desk.link("m-ann", LinkIn(device_id="tv-ann"), "token:ops")
        await desk.link("m-ann", LinkIn(device_id="phone-ann"), "token:ops")
        await desk.link("m-bob", LinkIn(device_id="tv-bob"), "token:ops")
        await desk.set_rule("camp-1", RuleIn(per_conversion=300), "token:ops")

        # one conversion, delivered three times: the same batch twice (a redelivery), then
        # the same outcome in another batch (a device that resent it after losing its ack)
        batch = make_batch("tv-ann", 1, outcomes=[("camp-1", "o-1", "conversion")])
        first = await backend.call(store_batch_detail, "tv-ann", batch, utcnow())
        again = await backend.call(store_batch_detail, "tv-ann", batch, utcnow())
        resent = batch.model_copy(update={"seq": 2})
        third = await backend.call(store_batches, [("tv-ann", resent)], utcnow())
        assert first.members == ("m-ann",) and not again.new and third[0].members == ()
        # an unowned device's and an unruled campaign's conversions credit no one
        other = make_batch("tv-x", 1, outcomes=[("camp-1", "o-1", "conversion")])
        unruled = make_batch("tv-bob", 1, outcomes=[("camp-2", "o-9", "conversion")])
        clicks = make_batch("tv-bob", 2, outcomes=[("camp-1", "o-1", "click")])
        for device, b in (("tv-x", other), ("tv-bob", unruled), ("tv-bob", clicks)):
            assert (await backend.call(store_batch_detail, device, b, utcnow())).members == ()

        ann = await desk.get("m-ann")
        assert (ann["balance"], ann["earned"], ann["tier"]) == (300, 300, 0)
        purchase = EntryIn(kind="purchase", points=250, source="order-77")
        assert (await desk.post("m-ann", purchase, "token:ops"))["new"]
        repeat = await desk.post("m-ann", purchase, "token:ops")
        assert not repeat["new"] and repeat["member"]["balance"] == 550
        assert repeat["member"]["tier_name"] == "silver"  # 550 earned >= 500
        with pytest.raises(Conflict, match="fewer than 600"):
            await desk.post("m-ann", EntryIn(kind="spend", points=600, source="p1"), "t")
        spent = await desk.post("m-ann", EntryIn(kind="spend", points=200, source="p2"), "t")
        assert spent["member"]["balance"] == 350
        assert spent["member"]["tier"] == 1  # a spend never lowers the tier
        await desk.post("m-bob", EntryIn(kind="grant", points=2500, source="welcome"), "t")

        # both of ann's devices hold her signed status; bob's his
        for device in ("tv-ann", "phone-ann"):
            status = _status(sent, topics, device, verifier)
            assert (status.device_id, status.tier, status.balance) == (device, 1, 350)
        assert _status(sent, topics, "tv-bob", verifier).tier == 2

        before = await backend.call(sql.ledger_totals)
        assert before == {
            "issued": 300 + 250 + 2500,
            "spent": 200,
            "entries": 4,
            "held": 350 + 2500,
            "erased_balance": 0,
        }
        figures = {t["name"]: t for t in (await desk.figures())["tiers"]}
        assert figures["silver"]["members"] == 1 and figures["gold"]["members"] == 1
        assert figures["silver"]["points_spent"] == 200

        # erasure: a device first (its link goes, the member stays), then the member
        erased_device = await backend.call(sql.unlink_erased_device, "phone-ann")
        assert erased_device == 1
        removed = await desk.erase("m-ann", "token:privacy")
        assert removed["entries_folded"] == 3 and removed["devices"] == 1
        assert sent.last[topics.member("tv-ann")] == b""  # the device drops the status
        with pytest.raises(NotFound):
            await desk.get("m-ann")
        after = await backend.call(sql.ledger_totals)
        assert after["issued"] == before["issued"] and after["spent"] == before["spent"]
        assert after["entries"] == before["entries"]
        assert after["held"] + after["erased_balance"] == before["held"]
        figures = {t["name"]: t for t in (await desk.figures())["tiers"]}
        assert figures["erased"]["points_issued"] == 550 and figures["silver"]["members"] == 0
        # nothing left names the person; the redelivered outcome still credits no one
        left: list[dict[str, Any]] = await backend.call(
            lambda s: s.rows("SELECT * FROM member_ledger WHERE member_id = 'm-ann'")
        )
        assert left == []
        await desk.link("m-bob", LinkIn(device_id="tv-ann"), "token:ops")
        late = await backend.call(
            store_batches, [("tv-ann", batch.model_copy(update={"seq": 3}))], utcnow()
        )
        assert late[0].members == ()
        assert (await desk.get("m-bob"))["balance"] == 2500
    finally:
        await backend.close()


def test_tiers_follow_the_published_thresholds() -> None:
    assert [tier_of(p) for p in (0, 499, 500, 1999, 2000, 9999, 10_000)] == [0, 0, 1, 1, 2, 2, 3]
    rows = tier_figures([(0, 0), (600, 100), (700, 0)], (50, 10))
    assert [(t.name, t.members, t.issued, t.spent) for t in rows] == [
        ("basic", 1, 0, 0),
        ("silver", 2, 1300, 100),
        ("gold", 0, 0, 0),
        ("platinum", 0, 0, 0),
        ("erased", 0, 50, 10),
    ]
