"""The coordinator's `POST /lan/v1/rank` (the wire of `agent.decide.remote`) over a real LAN
session: `HouseholdClient.rank` is a thin device's `RemoteRanker`; the coordinator scores with
its model and the household's context, answers None-worthy errors as counted refusals."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from agent.decide.remote import RankRequest, parse_request
from agent.household.client import HouseholdClient, HouseholdError
from agent.household.join import model_ranker
from protocol.signing import Signer, Verifier
from tests.support.household import member
from tests.support.local_device import running_device
from tests.support.waiting import eventually

# real mDNS packets and LAN sessions between several agents on loopback: the integration tier
pytestmark = pytest.mark.integration


SURFACE = "speaker_voice"


def _request(bundle: bytes) -> RankRequest:
    offers = [{**o, "surfaces": [SURFACE]} for o in json.loads(bundle)["offers"]]
    wire = {
        "device_id": "forged-id",
        "profile": "speaker",
        "surface": SURFACE,
        "local_hour": 9.5,
        "local_weekday": 2,
        "personalized": True,
        "offers": [
            {k: o[k] for k in ("id", "campaign_id", "type", "category", "discount", "priority")}
            for o in offers
        ],
    }
    return parse_request(wire)


async def test_a_thin_speaker_is_ranked_by_the_coordinators_model(tmp_path: Path) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    hub = await asyncio.to_thread(
        member, gateway, "hh-rank", "hub-1", ["hub"], tmp_path / "h", secret
    )
    thin = await asyncio.to_thread(
        member, gateway, "hh-rank", "speaker-1", ["thin"], tmp_path / "s", secret
    )
    fridge = await asyncio.to_thread(
        member, gateway, "hh-rank", "fridge-1", ["appliance"], tmp_path / "f", secret
    )
    verifier = Verifier.from_public_keys([gateway.public])
    await asyncio.to_thread((tmp_path / "hub").mkdir)
    async with running_device(tmp_path / "hub", profile="hub") as device:
        agent = device.agent
        request = _request(device.bundle([("a", 0.05, 10), ("b", 0.5, 90), ("c", 0.2, 50)]))
        ranker = model_ranker(lambda: agent.parts.slot.current)
        async with (
            HouseholdClient(thin, verifier, tick_s=0.2) as speaker,
            HouseholdClient(fridge, verifier, tick_s=0.2) as appliance,
        ):
            assert speaker.server is None  # a thin device serves nothing
            assert await speaker.rank(request) is None  # alone: no coordinator
            async with HouseholdClient(hub, verifier, tick_s=0.2, ranker=ranker) as coordinator:
                await eventually(lambda: speaker.connected_to == hub.fingerprint)
                result = await speaker.rank(request)
                assert result is not None
                assert set(result.scores) == {"a", "b", "c"}
                assert all(0.0 < s < 1.0 for s in result.scores.values())  # the model's
                assert result.model_version == agent.model_version
                assert coordinator.counters["household_ranked"] == 1
                # a malformed body: refused (400), counted on both sides, nothing ranked
                bad = {**request.to_wire(), "offers": [{"id": "x"}]}
                with pytest.raises(HouseholdError, match="400"):
                    await speaker._call("POST", "/lan/v1/rank", bad)
                assert coordinator.counters["household_bad_requests"] == 1
                # appliances report, they do not rank
                await eventually(lambda: appliance.connected_to == hub.fingerprint)
                assert await appliance.rank(request) is None
                assert appliance.counters["household_rank_fallbacks"] == 1
                assert coordinator.counters["household_ranked"] == 1
