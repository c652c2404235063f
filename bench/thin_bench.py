"""The thin device (`ranking = "thin"`, the speaker): its process's RSS, and its decision through
the household's coordinator.

* `thin_agent_rss_mb`: the RSS of a real `edgemart agent run --profile speaker` (thin: no
  model, no numpy, no onnxruntime) after `BENCH_THIN_SECONDS` (default 120) at 100 signals/s
  and one decision a second over its local API, acked by a gateway through Mosquitto, as a
  member of a household (`bench.household_setup`: its membership issued by the gateway's API,
  the sample campaigns on its surface, a hub agent process coordinating the home on the
  loopback LAN, through which the speaker ranks), started from a device image of its
  own (`bench.device_image`: private copies of libpython, lib-dynload and the extension modules
  it maps), vs the full agent (`--profile tv`) run the same way from its own image in the same
  run, one after the other (`bench.rss_bench._run(image=True)`). Why an image: the agent hands
  its clean library pages back after start (`MADV_PAGEOUT`), and the kernel keeps a page another
  process maps; on this host the gateway and the bench process map the same files, on a device
  nothing else does. The system libraries (libc, libcrypto, libssl, libsqlite3, libstdc++) stay
  shared, as on a device. Goal: under 48 MB, ratio <= 0.45.
* `thin_agent_rss_shared_host_mb`: the same two agents started from the venv, the library files
  shared with this host's other processes (what `thin_agent_rss_mb` measured before the image):
  the gap to `thin_agent_rss_mb` is the host's sharing, not the agent's.
* `household_decision_p99_us`: one thin decision (eligibility, the rank request through the
  thin device's `HouseholdClient` over its authenticated LAN session to the household's
  coordinator, the speaker's own numpy-free `decide_offers` on its scores) vs the same
  decision made locally with the model (baseline), interleaved in the same run. The
  coordinator is a real full agent
  process (`edgemart agent run --profile hub`, a membership grant in its data dir,
  `EDGEMART_AGENT__LAN_HOST=127.0.0.1`) that the thin client finds by mDNS on loopback and
  pairs with (the signed two-way handshake); it scores with the shipped model and its
  household context.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from agent.decide.catalog import build_catalog
from agent.decide.ranking import Consent, decide_catalog
from agent.decide.thin import decide_offers, rank_request
from agent.features.context import user_context
from agent.household.client import HouseholdClient
from agent.household.membership import credentials, load_key, write_membership
from agent.model.scoring import load_default_model
from bench.household_setup import start_hub
from bench.record import Record, percentiles
from bench.rss_bench import _run as run_agent_under_load
from protocol import codec
from protocol.envelopes import Offer, TrustFile
from protocol.ids import utcnow
from protocol.signing import Signer, Verifier
from simulators.household_lan import membership
from simulators.world import make_world

SURFACE = "speaker_voice"
TZ = "Asia/Shanghai"
ROUNDS = 600
CANDIDATES = 64
"""The synthetic world's catalog: every offer showable on the speaker."""
HH = "hh-thin-bench"


@dataclass(frozen=True, slots=True)
class AgentRss:
    """One agent's RSS over a run, MB."""

    end: float
    peak: float


def _agent_rss(profile: str, *, image: bool) -> AgentRss:
    seconds = float(os.environ.get("BENCH_THIN_SECONDS", "120"))
    with tempfile.TemporaryDirectory() as tmp:
        end, _, peak, _ = run_agent_under_load(
            seconds, Path(tmp), profile=profile, image=image, household=True
        )
    return AgentRss(end, peak)


def _rss() -> dict[tuple[str, bool], AgentRss]:
    """(profile, from an image) -> RSS, for the thin speaker and the full tv agent, from their
    own device images and from the venv; one at a time, so no two agents share pages."""
    return {
        (profile, image): _agent_rss(profile, image=image)
        for image in (True, False)
        for profile in ("speaker", "tv")
    }


def _offers() -> list[Offer]:
    now = utcnow()
    world = make_world(5, households=2, offers=CANDIDATES)
    return [
        Offer.model_validate(
            {
                **r,
                "surfaces": [SURFACE],
                "starts_at": now - timedelta(hours=1),
                "expires_at": now + timedelta(days=1),
            }
        )
        for r in world.catalog.records()
    ]


async def _decisions(thin: HouseholdClient) -> tuple[list[float], list[float], int]:
    """Interleaved (thin, local) decision times in µs, and the thin decisions that got scores."""
    model = await asyncio.to_thread(load_default_model)
    offers = _offers()
    catalog = build_catalog(offers, 1)
    consent = Consent(analytics=True, personalization=True, marketing=True)
    local: list[float] = []
    remote_us: list[float] = []
    scored = 0
    for i in range(ROUNDS + 20):
        now = utcnow()
        ctx = user_context(now, "speaker", TZ, None)
        started = time.perf_counter()
        request = rank_request(
            catalog.offers,
            device_id="speaker-0001",
            profile="speaker",
            surface=SURFACE,
            now=now,
            local_hour=ctx.local_hour,
            local_weekday=ctx.local_weekday,
            personalized=True,
        )
        assert request is not None
        result = await thin.rank(request)
        remote = decide_offers(offers, ctx, SURFACE, 3, now, consent, remote=result)
        thin_us = (time.perf_counter() - started) * 1e6
        started = time.perf_counter()
        decide_catalog(model, catalog, ctx, SURFACE, 3, now, consent)
        local_us = (time.perf_counter() - started) * 1e6
        if i >= 20:  # warm-up: the connection, the session's first runs
            remote_us.append(thin_us)
            local.append(local_us)
            scored += result is not None and bool(remote.ranked)
    return remote_us, local, scored


async def _through_hub(tmp: Path) -> tuple[list[float], list[float], int]:
    """A hub agent process coordinating the household, a thin client paired with it."""
    gateway = Signer.generate("bench")
    secret = secrets.token_bytes(32)
    hub_dir = tmp / "hub"
    hub_key = await asyncio.to_thread(load_key, hub_dir)
    hub_grant = membership(gateway, HH, "hub-bench", hub_key, ["hub"], secret)
    await asyncio.to_thread(write_membership, hub_dir, hub_grant)
    trust = tmp / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[gateway.public], topic_root="tin/v1")))
    grant = await asyncio.to_thread(
        lambda: membership(gateway, HH, "speaker-bench", load_key(tmp / "spk"), ["thin"], secret)
    )
    verifier = Verifier.from_public_keys([gateway.public])
    creds = credentials(grant, load_key(tmp / "spk"), verifier)
    hub = start_hub(hub_dir, trust, device_id="hub-bench")
    try:
        async with HouseholdClient(creds, verifier, tick_s=1.0) as thin:
            if not await thin.wait_connected(30.0):
                raise RuntimeError("the thin device found no coordinator")
            return await _decisions(thin)
    finally:
        hub.terminate()
        hub.wait(timeout=20)


def _rss_record(name: str, thin: AgentRss, full: AgentRss, how: str, why: str) -> Record:
    seconds = os.environ.get("BENCH_THIN_SECONDS", "120")
    return Record(
        name,
        thin.end,
        "MB",
        f"full agent RSS (edgemart agent run --profile tv), {how}, same run",
        full.end,
        f"`edgemart agent run --profile speaker` (ranking = thin, no numpy, no onnxruntime),"
        f" {how}{why}, each a member of a household coordinated by a hub agent process on"
        f" the loopback LAN (the speaker ranks through it), after {seconds} s at 100 signals/s"
        f" and a decision a second, via Mosquitto + gateway; peaks"
        f" {thin.peak:.1f} vs {full.peak:.1f} MB; goals: under 48 MB, ratio <= 0.45",
    )


def run() -> list[Record]:
    rss = _rss()
    with tempfile.TemporaryDirectory() as tmp:
        thin, local, scored = asyncio.run(_through_hub(Path(tmp)))
    thin_p50, thin_p99 = percentiles(thin, 0.5, 0.99)
    local_p50, local_p99 = percentiles(local, 0.5, 0.99)
    return [
        _rss_record(
            "thin_agent_rss_mb",
            rss["speaker", True],
            rss["tv", True],
            "each from its own device image",
            " (private copies of libpython, lib-dynload and the extension modules it maps: no"
            " other process maps them, as on a device; system libraries stay shared)",
        ),
        _rss_record(
            "thin_agent_rss_shared_host_mb",
            rss["speaker", False],
            rss["tv", False],
            "each from the venv",
            " (the gateway and the bench process map the same libraries, so their pages are not"
            " handed back: the gap to thin_agent_rss_mb is this host's sharing)",
        ),
        Record(
            "household_decision_p99_us",
            thin_p99,
            "µs",
            "the same decision made locally with the model (p99), same run",
            local_p99,
            f"{len(thin)} thin decisions of {CANDIDATES} candidates through the household's"
            f" coordinator (a hub agent process, found by mDNS, paired, POST /lan/v1/rank over"
            f" the LAN session on loopback), {scored} scored by it; p50 {thin_p50:.0f} vs"
            f" {local_p50:.0f} µs; ratio p99 {thin_p99 / max(local_p99, 1e-9):.2f}",
        ),
    ]
