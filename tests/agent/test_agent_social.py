"""Group buys and price cuts on the device (issue 19), in-process over a fake transport: the
local API stores and sends a request, a signed state is verified and shown with the time
left, forged, misaddressed and older states change nothing, pending requests are resent."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from protocol import codec
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from protocol.social import SocialRequest
from tests.support.builders import SURFACE, offer, signed_bundle
from tests.support.local_device import Client, Device
from tests.support.waiting import eventually

GROUP = {"size": 3, "window_s": 3600, "price": 12.0}


def state(signer: Signer, device: str, request_id: str | None, **kw: Any) -> bytes:
    now = utcnow()
    body = {
        "v": 1,
        "id": new_id(),
        "device_id": device,
        "kind": "group",
        "ref": "g-1",
        "campaign_id": "c-grp",
        "offer_id": "grp",
        "status": "open",
        "code": "7K3M9QPX",
        "size": 3,
        "seats": 1,
        "ends_at": format_time(now + timedelta(minutes=30)),
        "price": 12.0,
        "issued_at": format_time(now),
        "expires_at": format_time(now + timedelta(days=1)),
        **kw,
    }
    if request_id is not None:
        body["request_id"] = request_id
    return codec.dumps(signer.sign(body))


def sent(device: Device) -> list[SocialRequest]:
    return [
        codec.decode(payload, SocialRequest)
        for topic, payload, _ in device.transports.last.published
        if topic.endswith("/up/social")
    ]


async def test_a_group_is_started_shown_and_forged_states_are_refused(
    device: Device, client: Client
) -> None:
    agent, signer = device.agent, device.signer
    me = agent.settings.device_id
    device.transports.last.up()
    bundle = [offer("grp", type="group_buy", campaign_id="c-grp", price=20.0, group=GROUP)]
    bundle.append(offer("plain"))
    cut = {"floor": 5.0, "helps": 3, "window_s": 3600}
    bundle.append(offer("cut", type="price_cut", campaign_id="c-cut", price=20.0, cut=cut))
    await device.transports.last.deliver("offers", signed_bundle(signer, bundle), me)
    await eventually(lambda: agent.parts.offers.get("grp") is not None)

    await agent.set_consent({"analytics": True, "personalization": True, "marketing": True})
    ranked = await (await client.get("/v1/offers", params={"surface": SURFACE, "limit": 5})).json()
    assert {"grp", "cut"} <= {o["id"] for o in ranked["offers"]}  # shown, to be started
    refused = await client.post("/v1/groups", json={"offer_id": "plain"})
    assert refused.status == 409
    assert (await client.post("/v1/groups", json={"code": "bad"})).status == 400
    assert (await client.post("/v1/groups", json={"offer_id": "grp", "code": "x"})).status == 400

    started = await client.post("/v1/groups", json={"offer_id": "grp"})
    assert started.status == 202
    body = await started.json()
    request_id = body["request_id"]
    assert body["pending"] is True
    (request,) = sent(device)
    assert request.id == request_id
    assert request.action == "group_start"
    assert request.campaign_id == "c-grp"

    other = Signer.generate("k1")  # the same kid, another key: a forgery
    forged = [
        state(other, me, request_id),
        state(signer, "tv-someone-else", request_id),
        codec.dumps({**json.loads(state(signer, me, request_id)), "seats": 3}),
    ]
    for payload in forged:
        await device.transports.last.deliver("social", payload, me)
    assert agent.counters["social_states_bad"] == len(forged)
    assert (await (await client.get(f"/v1/groups/{request_id}")).json())["pending"] is True

    await device.transports.last.deliver("social", state(signer, me, request_id), me)
    shown = await (await client.get(f"/v1/groups/{request_id}")).json()
    assert shown["pending"] is False
    assert shown["code"] == "7K3M9QPX"
    assert shown["seats"] == 1
    assert 1700 < shown["seconds_left"] <= 1800
    # a push: the group formed, with this member's coupon; an older state arriving late
    # does not replace it
    older = state(signer, me, None, seats=2)
    formed = state(signer, me, None, status="formed", seats=3, coupon="C0FFEE")
    await device.transports.last.deliver("social", formed, me)
    await device.transports.last.deliver("social", older, me)
    by_ref = await (await client.get("/v1/groups/g-1")).json()
    assert by_ref["status"] == "formed"
    assert by_ref["coupon"] == "C0FFEE"
    assert agent.counters["social_states_stale"] == 1
    assert (await client.get("/v1/cuts/g-1")).status == 404  # a group, not a cut
    assert (await client.get("/v1/groups/nothing-here")).status == 404
    device.transports.last.down()  # the bundle's receipt is never acked here: no drain wait


async def test_a_code_is_normalised_and_pending_requests_are_resent(
    device: Device, client: Client
) -> None:
    joined = await client.post("/v1/cuts", json={"code": "7k3m-9qpx"})
    assert joined.status == 202
    assert sent(device) == []  # the link is down: stored, waiting
    device.transports.last.up()
    await eventually(lambda: len(sent(device)) == 1)  # sent on connect
    (request,) = sent(device)
    assert request.action == "cut_help"
    assert request.code == "7K3M9QPX"
    assert await device.agent.parts.social.resend() == 1
    assert [r.id for r in sent(device)] == [request.id, request.id]  # the same key again
    await device.transports.last.deliver(
        "social",
        state(device.signer, device.agent.settings.device_id, request.id, kind="cut", ref="c-9"),
        device.agent.settings.device_id,
    )
    assert await device.agent.parts.social.resend() == 0
    # a refused join (the group was full) answers the request, and is no group of this device
    late = await client.post("/v1/groups", json={"code": "7K3M9QPX"})
    late_id = (await late.json())["request_id"]
    full = state(device.signer, device.agent.settings.device_id, late_id, ref="g-full",
                 status="refused", reason="the group is full")  # fmt: skip
    await device.transports.last.deliver("social", full, device.agent.settings.device_id)
    shown = await (await client.get(f"/v1/groups/{late_id}")).json()
    assert shown["answer"] == {"status": "refused", "reason": "the group is full"}
    assert (await client.get("/v1/groups/g-full")).status == 404
