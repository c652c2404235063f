"""The social desk (issue 19) over a real gateway store: requests from `up/social` decided and
answered signed; a bad message counted, never raised; a group's window closing releases its
seats and tells every member, signed; a push whose publish failed stays owed and goes out on
the next round (what a crash between commit and publish leaves)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from cloud_gateway.campaigns.model import CampaignIn, new_campaign, transition
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.campaigns import insert_campaign
from cloud_gateway.errors import GatewayError
from cloud_gateway.runtime.wiring import Wiring
from cloud_gateway.social.desk import SocialDesk
from protocol import codec
from protocol.ids import new_id, utcnow
from protocol.signing import Signer, Verifier
from protocol.social import SocialRequest, SocialState
from protocol.topics import Topics

TOPICS = Topics("t/v1")


def _campaign(session: Session) -> str:
    offer = {
        "id": "together",
        "type": "group_buy",
        "title": "Together",
        "category": "kitchen",
        "price": 100,
        "surfaces": ["tv_home_banner"],
        "group": {"size": 3, "window_s": 120, "price": 70},
    }
    spec = CampaignIn.model_validate({"name": "g", "cohorts": ["all"], "offers": [offer]})
    now = utcnow()
    campaign = transition(new_campaign(spec, now), "launch", now)
    insert_campaign(session, campaign.doc())
    return campaign.id


async def test_the_desk_answers_expires_and_resends_what_it_owes(
    make_backend: Callable[[], Backend[Session]],
) -> None:
    db = await make_backend().open()
    signer = Signer.generate("gw")
    verifier = Verifier.from_public_keys([signer.public])
    sent: list[tuple[str, dict[str, Any]]] = []
    failing = False

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        if failing:
            raise GatewayError("broker away")
        sent.append((topic, json.loads(payload)))

    now = [utcnow()]
    counters: Counter[str] = Counter()
    desk = SocialDesk(Wiring(db, signer, TOPICS, publish, counters), clock=lambda: now[0])
    try:
        cid = await db.call(_campaign)
        now[0] = utcnow()  # after the launch: the offer's window has begun
        # a bad message and another device's are counted, not raised, not queued
        assert await desk.handle(TOPICS.social_up("tv-001"), b"{not json")
        stray = SocialRequest(id="r0", device_id="tv-002", action="group_join", code="7K3M9QPX",
                              at=utcnow())  # fmt: skip
        assert await desk.handle(TOPICS.social_up("tv-001"), codec.encode(stray))
        assert not await desk.handle(TOPICS.claim_up("tv-001"), b"{}")  # not social: ingest's
        assert counters["social_rejected"] == 2

        start = SocialRequest(id=new_id(), device_id="tv-001", action="group_start",
                              campaign_id=cid, offer_id="together", at=utcnow())  # fmt: skip
        (answer,) = await desk.decide([("tv-001", start)])
        assert answer.outcome == "started"
        topic, body = sent[-1]
        assert topic == TOPICS.social_down("tv-001")
        verifier.verify(body, role="claims")
        code = SocialState.model_validate(body).code
        assert code is not None, body.get("reason")
        join = SocialRequest(id=new_id(), device_id="tv-003", action="group_join", code=code,
                             at=utcnow())  # fmt: skip
        await desk.decide([("tv-003", join), ("tv-003", join)])  # twice: one seat
        assert counters["social_joined"] == 1
        assert counters["social_duplicate"] == 1

        # the window closes while the broker is away: nothing lost, sent on the next round
        now[0] = utcnow() + timedelta(seconds=121)
        failing = True
        sent.clear()
        assert await desk.close_once() == 2
        assert sent == []
        failing = False
        now[0] += timedelta(seconds=10)  # the owed pushes are older than the resend delay
        assert await desk.close_once() == 2
        told = {t: b for t, b in sent}
        assert set(told) == {TOPICS.social_down("tv-001"), TOPICS.social_down("tv-003")}
        for body in told.values():
            verifier.verify(body, role="claims")
            state = SocialState.model_validate(body)
            assert state.status == "expired"
            assert state.seats == 2
            assert isinstance(state.ends_at, datetime)
        sent.clear()
        assert await desk.close_once() == 0  # sent once, forgotten
        assert counters["social_pushes_sent"] == 2
    finally:
        await db.close()
