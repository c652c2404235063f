"""Live-sale waves on both backends (issue 19): a sale's waves are recorded, a claim before
its wave is refused, the claim that takes the last coupon makes the cohort's signed notice
list the offer, stock added or pulled during the sale keeps `initial - stock` equal to the
grants, and a device's erasure unlinks it from its member."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from pydantic import ValidationError

from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.campaigns.waves import LiveSaleIn, StockIn, WaveDesk
from cloud_gateway.claims.desk import signed_result
from cloud_gateway.db import members as member_sql
from cloud_gateway.db import waves as sql
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.claims import claim_batch
from cloud_gateway.db.commands import erase_device
from cloud_gateway.db.ingest import store_batch
from cloud_gateway.errors import InvalidInput, NotFound
from cloud_gateway.runtime.wiring import Wiring
from protocol import codec
from protocol.envelopes import ClaimRequest
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer, Verifier
from protocol.topics import Topics
from protocol.waves import SoldOut
from tests.support.builders import make_batch

OFFER = {
    "type": "coupon",
    "title": "Live drop",
    "category": "appliances",
    "surfaces": ["tv_home_banner"],
    "limited": True,
}


class Sent:
    def __init__(self) -> None:
        self.last: dict[str, bytes] = {}

    async def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.last[topic] = payload


def _claims(cid: str, offer: str, devices: list[str]) -> list[tuple[str, ClaimRequest]]:
    return [
        (d, ClaimRequest(id=new_id(), device_id=d, offer_id=offer, campaign_id=cid, at=utcnow()))
        for d in devices
    ]


@pytest.mark.integration  # ~0.5 s on SQLite (a launch builds and signs catalogs)
async def test_waves_sell_out_restock_and_refuse_early_claims(
    make_backend: Callable[[], Backend[Session]],
) -> None:
    signer = Signer.generate("k1")
    topics, sent = Topics(), Sent()
    backend = await make_backend().open()
    try:
        wiring = Wiring(backend, signer, topics, sent, Counter())
        campaigns = CampaignService(wiring)
        desk = WaveDesk(wiring, campaigns)
        now = utcnow()
        first, second = now + timedelta(seconds=1), now + timedelta(hours=1)
        spec = LiveSaleIn.model_validate(
            {
                "name": "drop",
                "cohorts": ["all"],
                "waves": [
                    {"at": format_time(first), "offers": [{**OFFER, "id": "a1", "stock": 2}]},
                    {"at": format_time(second), "offers": [{**OFFER, "id": "b1", "stock": 3}]},
                ],
            }
        )
        made = await desk.create(spec, "token:ops")
        cid = made["campaign"]["id"]
        assert [w["offers"][0]["offer_id"] for w in made["waves"]] == ["a1", "b1"]
        await campaigns.launch(cid, "token:ops")
        catalog = codec.decode_object(sent.last[topics.cohort_offers("all")])
        sealed = {o["id"]: o.get("not_before") for o in catalog["offers"]}
        assert sealed == {"a1": format_time(first), "b1": format_time(second)}
        assert await backend.call(sql.next_wave, format_time(now)) == format_time(first)

        make = partial(signed_result, signer=signer)
        early = await backend.call(claim_batch, _claims(cid, "b1", ["tv-0001"]), make, utcnow())
        assert not early[0].granted and "not started" in early[0].result["reason"]
        at = first + timedelta(milliseconds=10)
        answers = await backend.call(
            claim_batch, _claims(cid, "a1", ["tv-0001", "tv-0002", "tv-0003"]), make, at
        )
        assert [a.granted for a in answers] == [True, True, False]
        assert any(a.sold_out for a in answers)
        assert await desk.broadcast() == 1
        notice = codec.decode_object(sent.last[topics.cohort_soldout("all")])
        Verifier.from_public_keys([signer.public]).verify(notice, role="offers")
        assert SoldOut.model_validate(notice).offers == ["a1"]
        assert await desk.broadcast() == 0  # nothing changed: no notice

        added = await desk.change_stock(cid, StockIn(offer_id="a1", delta=2), "token:ops")
        assert (added["initial"], added["stock"]) == (4, 2)
        assert await desk.broadcast() == 1
        assert SoldOut.model_validate_json(sent.last[topics.cohort_soldout("all")]).offers == []
        pulled = await desk.change_stock(cid, StockIn(offer_id="a1", delta=-5), "token:ops")
        assert (pulled["initial"], pulled["stock"]) == (2, 0)  # the two grants stay counted
        waves = await desk.waves(cid)
        assert waves[0]["offers"][0] == {
            "offer_id": "a1",
            "initial": 2,
            "left": 0,
            "taken": 2,
            "sold_out": True,
            "admitted": None,  # no device registered: no admission
        }
        with pytest.raises(InvalidInput):
            await desk.change_stock(cid, StockIn(offer_id="zz", delta=1), "token:ops")
        with pytest.raises(NotFound):
            await desk.waves("no-such-sale")

        # a device of a member: its erasure unlinks it, the member and its ledger stay
        await backend.call(member_sql.create_member, "m-1", None, "ops", utcnow())
        await backend.call(member_sql.link_device, "m-1", "tv-0001", "ops", utcnow())
        await backend.call(store_batch, "tv-0001", make_batch("tv-0001", 1), utcnow())
        command: dict[str, Any] = {
            "id": new_id(),
            "kind": "forget",
            "expires_at": format_time(utcnow() + timedelta(days=1)),
        }
        removed = await backend.call(erase_device, "tv-0001", command, "ops", utcnow())
        assert removed is not None and removed["member_link"] == 1
        assert (await backend.call(member_sql.get_member, "m-1"))["devices"] == []
    finally:
        await backend.close()


def test_a_sale_names_what_is_wrong() -> None:
    at = format_time(utcnow())
    with pytest.raises(ValidationError, match="limited, with its stock"):
        LiveSaleIn.model_validate(
            {"name": "x", "cohorts": ["all"], "waves": [{"at": at, "offers": [{**OFFER}]}]}
        )
    wave = {"at": at, "offers": [{**OFFER, "stock": 1}]}
    with pytest.raises(ValidationError, match="time order"):
        LiveSaleIn.model_validate({"name": "x", "cohorts": ["all"], "waves": [wave, wave]})
