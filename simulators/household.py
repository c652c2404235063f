"""A simulated household: real agents (hub, TV, two phones) in one process, scripted usage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import numpy as np

from agent.api.owners import admin_headers
from agent.config import load_settings
from agent.runtime.agent import Agent
from agent.store.thread import StorePool
from protocol.ids import format_time, utcnow
from simulators.world import Persona, World, usage_signals

log = logging.getLogger(__name__)

CONSENT_ALL = {"analytics": True, "personalization": True, "marketing": True}
UNPACED: dict[str, Any] = {
    "quiet_hours": [],
    "offer_per_day": None,
    "campaign_per_day": None,
    "global_per_day": None,
    "surface_per_day": {},
}
"""The `[decisions]` simulated households run with: without the shipped profiles' quiet hours
and daily caps (issue 18). A run lives in minutes what devices live over days, so real pacing
would make its figures depend on the hour it starts; the cloud policy still applies on top."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device of the household: its id, firmware profile, and how the script talks to it."""

    device_id: str
    profile: str
    via_http: bool = False
    consent: dict[str, bool] = field(default_factory=lambda: dict(CONSENT_ALL))


def default_devices(persona: Persona) -> list[DeviceSpec]:
    """The issue's household: a hub, a TV, two phones (one without personalization)."""
    hh = persona.household_id
    return [
        DeviceSpec(f"{hh}-hub", "hub"),
        DeviceSpec(f"{hh}-tv", "tv", via_http=True),
        DeviceSpec(f"{hh}-phone-1", "phone"),
        DeviceSpec(
            f"{hh}-phone-2",
            "phone",
            consent={"analytics": True, "personalization": False, "marketing": True},
        ),
    ]


@dataclass(slots=True)
class DeviceRun:
    """What the script did with one device and what it saw back."""

    spec: DeviceSpec
    agent: Agent
    accepted: list[str] = field(default_factory=list)
    decisions: int = 0
    top: str = ""
    shown: int = 0
    clicks: int = 0
    conversions: int = 0


class Household:
    """`async with Household(world, index, broker, trust, data_dir) as hh:` runs real agents."""

    def __init__(
        self,
        world: World,
        index: int,
        *,
        broker: str,
        trust: Path,
        data_dir: Path,
        devices: Sequence[DeviceSpec] | None = None,
        seed: int = 0,
        store_pool: StorePool | None = None,
    ) -> None:
        """`store_pool`: store threads shared with the process's other agents (the fleet)."""
        self.world = world
        self.persona = world.persona(index)
        self.broker = broker
        self.trust = trust
        self.data_dir = data_dir
        self.specs = list(devices) if devices is not None else default_devices(self.persona)
        self.rng = np.random.default_rng(seed)
        self._store_pool = store_pool
        self.runs: list[DeviceRun] = []
        self._stack = contextlib.AsyncExitStack()
        self._http: aiohttp.ClientSession | None = None
        self._auth: dict[str, dict[str, str]] = {}
        self.appliances_on_lan = False
        """Set by `simulators.household_lan`: the appliances report their consumable levels to
        the household's coordinator, so no device is scripted to report them itself."""

    async def __aenter__(self) -> Household:
        await self._stack.__aenter__()
        try:
            self._http = await self._stack.enter_async_context(aiohttp.ClientSession())
            for spec in self.specs:
                settings = load_settings(
                    profile=spec.profile,
                    device_id=spec.device_id,
                    broker=self.broker,
                    data_dir=self.data_dir / spec.device_id,
                    api_port=0 if spec.via_http else None,
                    trust=self.trust,
                    overrides={"decisions": UNPACED},
                )
                agent = await self._stack.enter_async_context(
                    Agent(settings, store_pool=self._store_pool)
                )
                await agent.set_consent(spec.consent)
                self.runs.append(DeviceRun(spec, agent))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    def weekly_signals(self) -> int:
        """How many signals one of this household's devices sends in a week (its persona's
        activity rate: what the shipped model was trained on)."""
        return max(30, round(self.persona.activity * 7))

    async def use(
        self,
        signals_per_device: int | Mapping[str, int],
        per_request: int = 25,
        history: timedelta = timedelta(0),
    ) -> None:
        """Scripted usage: every device sends its share of signals (the same count, or each
        device's by its id), in small requests.

        With `history`, the signals are dated evenly over that much of the past (a week of
        use replayed in seconds), so feature windows see a plausible week, not one burst."""
        now = utcnow()

        async def one(run: DeviceRun) -> None:
            n = (
                signals_per_device
                if isinstance(signals_per_device, int)
                else signals_per_device.get(run.spec.device_id, 0)
            )
            if n <= 0:
                return
            script = _usage(self.persona, run.spec.profile, self.rng, n)
            if self.appliances_on_lan:
                script = [s for s in script if s["kind"] != "consumable_level"]
            if history:
                step = history / max(len(script), 1)
                profile = run.agent.settings.profile
                kept = []
                for i, signal in enumerate(script):
                    at = now - history + step * i
                    # a signal past its kind's time to live would be gone from a real device
                    # (and the agent refuses it: 400 naming the bound)
                    ttl = timedelta(hours=profile.policy(str(signal["kind"])).ttl_hours)
                    if at > now - ttl + timedelta(minutes=1):
                        signal["at"] = format_time(at)
                        kept.append(signal)
                script = kept
            for start in range(0, len(script), per_request):
                chunk = script[start : start + per_request]
                if run.spec.via_http:
                    run.accepted.extend(await self._post_signals(run, chunk))
                else:
                    run.accepted.extend(await run.agent.accept_signals(chunk))
                await asyncio.sleep(0)

        await asyncio.gather(*(one(run) for run in self.runs))

    async def _post_signals(self, run: DeviceRun, chunk: list[dict[str, object]]) -> list[str]:
        assert self._http is not None
        url = f"http://127.0.0.1:{run.agent.api_port}/v1/signals"
        if run.spec.device_id not in self._auth:  # the token the agent wrote on its first start
            data_dir = run.agent.settings.data_dir
            self._auth[run.spec.device_id] = await asyncio.to_thread(admin_headers, data_dir)
        headers = self._auth[run.spec.device_id]
        async with self._http.post(url, json={"signals": chunk}, headers=headers) as resp:
            body = await resp.json()
            if resp.status != 202:
                raise RuntimeError(
                    f"{run.spec.device_id}: POST /v1/signals -> {resp.status} {body}"
                )
            ids: list[str] = body["ids"]
            return ids

    async def browse(self, rounds: int, hour: int = 20) -> None:
        """Each round, every device ranks each of its surfaces, shows the top offer, and the
        simulated person clicks (and sometimes buys) with the world's hidden probability."""
        for _ in range(rounds):
            for run in self.runs:
                for surface in run.agent.settings.profile.surfaces:
                    ranked = await run.agent.rank(surface=surface, limit=3)
                    run.decisions += 1
                    if not ranked:
                        continue
                    top = ranked[0].offer
                    if not run.top:
                        reasons = ", ".join(r for r in ranked[0].reasons if ":" not in r)
                        run.top = f"{top.title} ({ranked[0].score:.2f}; {reasons})"
                    await run.agent.record_outcome(top.id, "impression", surface)
                    run.shown += 1
                    p = self._p_click(top.id, hour, run.spec.profile)
                    if self.rng.random() < p:
                        await run.agent.record_outcome(top.id, "click", surface)
                        run.clicks += 1
                        if self.rng.random() < 0.3:
                            await run.agent.record_outcome(top.id, "conversion", surface)
                            run.conversions += 1
            await asyncio.sleep(0)

    def _p_click(self, offer_id: str, hour: int, profile: str) -> float:
        try:
            return self.world.p_click(self.persona.index, offer_id, hour, profile)
        except ValueError:
            return 0.02  # an offer from outside the synthetic catalog

    async def drain(self, timeout: float) -> bool:
        results = await asyncio.gather(*(run.agent.drain(timeout=timeout) for run in self.runs))
        return all(results)


def _usage(
    persona: Persona, profile: str, rng: np.random.Generator, n: int
) -> list[dict[str, object]]:
    return usage_signals(persona, profile, rng, n)
