"""A thin device (`ranking = "thin"`): ranked by its household's coordinator over the LAN (a
real full agent as hub, real mDNS on loopback, the authenticated session of
`agent.household`), by priority when the coordinator is away, with no model, no numpy and no
onnxruntime in its process."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.household.client import HouseholdClient
from agent.household.join import model_ranker
from protocol.signing import Signer, Verifier
from tests.support.household import member
from tests.support.local_device import SURFACE, running_device
from tests.support.waiting import eventually

EVERYTHING = {"analytics": True, "personalization": True, "marketing": True}
OFFERS = [("low", 0.05, 10), ("high", 0.5, 90), ("deal", 0.6, 30)]


@pytest.mark.integration  # real mDNS and a LAN session with the hub
async def test_a_thin_speaker_gets_ranked_offers_through_the_coordinator_and_priority_without(
    tmp_path: Path,
) -> None:
    gateway = Signer.generate("gw")
    secret = secrets.token_bytes(32)
    verifier = Verifier.from_public_keys([gateway.public])
    for folder in ("hub", "speaker"):
        await asyncio.to_thread((tmp_path / folder).mkdir)
    hub_creds = await asyncio.to_thread(
        member, gateway, "hh-thin", "hub-1", ["hub"], tmp_path / "hub-lan", secret
    )
    thin_creds = await asyncio.to_thread(
        member, gateway, "hh-thin", "speaker-1", ["thin"], tmp_path / "speaker-lan", secret
    )
    async with (
        running_device(tmp_path / "hub", profile="hub") as hub,
        running_device(tmp_path / "speaker", overrides={"ranking": "thin"}) as speaker,
    ):
        thin = speaker.agent
        assert thin.model is None  # no model of its own
        await thin.set_consent(EVERYTHING)
        await speaker.transports.last.deliver("offers", speaker.bundle(OFFERS))
        ranker = model_ranker(lambda: hub.agent.parts.slot.current)
        async with HouseholdClient(thin_creds, verifier, tick_s=0.2) as thin_lan:
            thin.attach_household(thin_lan)
            async with HouseholdClient(hub_creds, verifier, tick_s=0.2, ranker=ranker) as lan:
                hub.agent.attach_household(lan)
                await eventually(lambda: thin_lan.connected_to == hub_creds.fingerprint)
                decision = await thin.decide(SURFACE, 3)
                assert decision.model_version == hub.agent.model_version is not None
                assert {r.offer.id for r in decision.ranked} == {"low", "high", "deal"}
                assert all(
                    r.reasons[0] == f"remote:v{decision.model_version}" for r in decision.ranked
                )
                scores = [r.score for r in decision.ranked]
                assert scores == sorted(scores, reverse=True)
                assert min(scores) > 0.0 and max(scores) < 1.0  # model scores, not priorities
                assert thin.counters["remote_ranked"] == 1
                assert lan.counters["household_ranked"] == 1
                # outcomes still go through its own outbox
                await thin.record_outcome(decision.ranked[0].offer.id, "impression", SURFACE)
                assert thin.store.counters.outcome_rows == 1
                hub.agent.attach_household(None)
            # the coordinator left the LAN: priority, from the thin device alone
            await eventually(lambda: thin_lan.coordinator is None)
            decision = await thin.decide(SURFACE, 3)
            assert [r.offer.id for r in decision.ranked] == ["high", "deal", "low"]
            assert all(r.reasons[0] == "no_model" for r in decision.ranked)
            assert [r.score for r in decision.ranked] == [0.9, 0.3, 0.1]
            assert decision.model_version is None
            assert thin.counters["remote_rank_offline"] == 1
            thin.attach_household(None)


async def test_without_a_household_a_thin_device_ranks_by_priority(tmp_path: Path) -> None:
    async with running_device(tmp_path, overrides={"ranking": "thin"}) as device:
        await device.agent.set_consent(EVERYTHING)
        await device.transports.last.deliver("offers", device.bundle(OFFERS))
        decision = await device.agent.decide(SURFACE, 3)
        assert [r.offer.id for r in decision.ranked] == ["high", "deal", "low"]
        assert decision.model_version is None


THIN_PROCESS = textwrap.dedent(
    """
    import asyncio, importlib, json, sys
    from datetime import timedelta
    from pathlib import Path

    from agent.config import load_settings
    from agent.runtime.agent import Agent
    from protocol import codec
    from protocol.envelopes import TrustFile
    from protocol.ids import format_time, new_id, utcnow
    from protocol.signing import Signer
    from tests.support.fake_transport import FakeTransports

    # not tests.support.local_device: its helpers bring numpy (the simulators, the builders)

    def heavy():
        # (`onnx`, not onnxruntime, would come with the test's model builders); aiohttp is
        # 13 MB a thin device does without (issue 17: under 48 MB)
        heavy = ("numpy", "onnxruntime", "aiohttp")
        return sorted(m for m in sys.modules if m.split(".")[0] in heavy)

    def bundle(signer):
        now = utcnow()
        offer = {
            "campaign_id": "c", "type": "coupon", "title": "t", "category": "groceries",
            "surfaces": ["speaker_voice"],
            "starts_at": format_time(now - timedelta(minutes=5)),
            "expires_at": format_time(now + timedelta(days=1)),
        }
        body = {
            "v": 1, "id": new_id(), "issued_at": format_time(now),
            "expires_at": format_time(now + timedelta(hours=1)),
            "offers": [
                {**offer, "id": "a", "campaign_id": "ca", "priority": 80},
                {**offer, "id": "b", "campaign_id": "cb", "priority": 20},
            ],
        }
        return codec.dumps(signer.sign(body))

    async def main(tmp):
        signer = Signer.generate("k1")
        trust = tmp / "trust.json"
        trust.write_bytes(codec.encode(TrustFile(keys=[signer.public], topic_root="tin/v1")))
        unpaced = {"quiet_hours": [], "offer_per_day": None, "campaign_per_day": None,
                   "global_per_day": None, "surface_per_day": {}}
        settings = load_settings(
            profile="speaker", device_id="speaker-1", broker="mqtt://127.0.0.1:9",
            data_dir=tmp / "data", api_port=None, trust=trust,
            overrides={"topic_root": "tin/v1", "decisions": unpaced}, environ={},
        )
        transports = FakeTransports()
        async with Agent(settings, transport=transports) as agent:
            started = heavy()
            await agent.set_consent(
                {"analytics": True, "personalization": True, "marketing": True}
            )
            await transports.last.deliver("offers", bundle(signer))
            decision = await agent.decide("speaker_voice", 3)
            return {
                "ranking": agent.settings.profile.ranking,
                "model": agent.model is not None,
                "decided": decision.model_version,
                "ranked": [(r.offer.id, r.reasons[0]) for r in decision.ranked],
                "after_start": started,
                "after_decision": heavy(),
                # what a speaker in a household adds (agent.household, imported on a device
                # with a LAN address): the client, the join and the coordinator's side
                "after_household": (
                    importlib.import_module("agent.household.join"),
                    importlib.import_module("agent.household.client"),
                    importlib.import_module("agent.household.coordinator"),
                    heavy(),
                )[-1],
            }

    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
    """
)


@pytest.mark.integration
def test_the_thin_speaker_never_imports_numpy_onnxruntime_or_aiohttp(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", THIN_PROCESS, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "ranking": "thin",
        "model": False,
        "decided": None,
        "ranked": [["a", "no_model"], ["b", "no_model"]],
        "after_start": [],
        "after_decision": [],
        "after_household": [],
    }
