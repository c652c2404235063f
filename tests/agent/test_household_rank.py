"""A thin device ranks through the coordinator (`POST /lan/v1/rank`): the coordinator's model
scores the thin device's candidates; without a coordinator `rank_remote` answers None (the
thin agent then ranks by priority on its own)."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

from agent.household.client import HouseholdClient
from agent.household.remote_rank import model_ranker
from protocol.signing import Signer, Verifier
from tests.support.household import member
from tests.support.local_device import running_device
from tests.support.waiting import eventually

SURFACE = "speaker_voice"


async def test_a_thin_speaker_is_ranked_by_the_coordinators_model(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    hub = await asyncio.to_thread(
        member, gateway, "hh-rank", "hub-1", ["hub"], tmp_path / "h", secret
    )
    thin = await asyncio.to_thread(
        member, gateway, "hh-rank", "speaker-1", ["thin"], tmp_path / "s", secret
    )
    verifier = Verifier.from_public_keys([gateway.public])
    await asyncio.to_thread((tmp_path / "hub").mkdir)
    async with running_device(tmp_path / "hub", profile="hub") as device:
        agent = device.agent
        profile = agent.settings.profile
        ranker = model_ranker(lambda: agent.parts.slot.current, profile.timezone, 500)
        bundle = json.loads(device.bundle([("a", 0.05, 10), ("b", 0.5, 90), ("c", 0.2, 50)]))
        offers = [{**o, "surfaces": [SURFACE]} for o in bundle["offers"]]
        async with HouseholdClient(thin, verifier, tick_s=0.2) as speaker:
            assert speaker.server is None  # a thin device serves nothing
            assert await speaker.rank_remote(SURFACE, offers) is None  # alone: no coordinator
            async with HouseholdClient(hub, verifier, tick_s=0.2, ranker=ranker):
                await eventually(lambda: speaker.connected_to == hub.fingerprint)
                answer = await speaker.rank_remote(SURFACE, offers, limit=2)
                assert answer is not None
                ranked = answer["ranked"]
                assert len(ranked) == 2
                assert {r["offer_id"] for r in ranked} <= {"a", "b", "c"}
                scores = [r["score"] for r in ranked]
                assert scores == sorted(scores, reverse=True)
                assert answer["model_version"] == agent.model_version
                assert answer["device_id"] == "speaker-1"
                bad = await speaker.rank_remote(SURFACE, [{"id": "x"}])
                assert bad is None and speaker.counters["household_rank_fallbacks"] == 1
