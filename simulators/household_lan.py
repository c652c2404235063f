"""A simulated household on the LAN (issue 17): its agents join with memberships the gateway
issued (`POST /v1/households/{id}/members`) and find each other with real mDNS; its
appliances (purifier, water filter: the persona's consumables) report their levels to the
coordinator with their own credentials, which is how the TV learns the filter runs low."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.household.client import HouseholdClient
from agent.household.join import model_ranker, policy_caps
from agent.household.membership import credentials, load_key
from agent.offers.book import load_trust
from protocol.household import MemberRole, Membership
from protocol.ids import utcnow
from protocol.signing import Signer, Verifier
from simulators.household import DeviceRun, Household

Issue = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""(household id, member body) -> the signed membership (the gateway's API in the demo)."""
ROLE_OF_PROFILE = {"hub": "hub", "tv": "member", "phone": "member", "speaker": "thin"}


def membership(  # noqa: PLR0917  # the fields of a membership, in the wire's order
    gateway: Signer,
    household_id: str,
    device_id: str,
    key: Signer,
    roles: Sequence[MemberRole],
    secret: bytes,
    ttl: timedelta = timedelta(days=1),
) -> dict[str, object]:
    """A grant as the gateway's `POST /v1/households/{id}/members` answers it (the signed
    membership and the household secret), made without a gateway: tests and benches."""
    now = utcnow()
    body = Membership(
        household_id=household_id,
        device_id=device_id,
        device_key=key.public.public_key,
        roles=list(roles),
        issued_at=now,
        expires_at=now + ttl,
    )
    return {
        "membership": gateway.sign(body.to_wire()),
        "household_secret": base64.b64encode(secret).decode(),
    }


def appliance_id(household_id: str, category: str) -> str:
    return f"{household_id}-{category.replace('_', '-')}"[:64]


class HouseholdLan:
    """`async with HouseholdLan(household, issue, trust) as lan:` every agent of `household`
    and its appliances on the loopback LAN; `await lan.share()` posts the devices'
    contributions (under their consent) and the appliances' levels."""

    def __init__(
        self,
        household: Household,
        issue: Issue,
        trust: Path,
        *,
        tick_s: float = 1.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.household = household
        self.issue = issue
        self.trust = trust
        self.tick_s = tick_s
        self.host = host
        self.clients: dict[str, HouseholdClient] = {}
        self.appliances: dict[str, HouseholdClient] = {}
        self.crashed: dict[str, DeviceRun] = {}
        """Devices whose household client `crash` stopped, until `restart`."""
        self.rogue: HouseholdClient | None = None
        """The spoofed coordinator of `spoof`, until `unspoof`."""
        self._verifier: Verifier | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def household_id(self) -> str:
        return self.household.persona.household_id

    async def __aenter__(self) -> HouseholdLan:
        await self._stack.__aenter__()
        try:
            pinned = await asyncio.to_thread(load_trust, self.trust)
            verifier = Verifier.from_public_keys(pinned.keys)
            self._verifier = verifier
            joins = [self._join(run, verifier) for run in self.household.runs]
            levels = self.household.persona.consumables
            joins += [self._appliance(c, 1.0 - level, verifier) for c, level in levels.items()]
            await asyncio.gather(*joins)
            self.household.appliances_on_lan = True  # levels go to the coordinator, not the TV
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
        for run in self.household.runs:
            run.agent.attach_household(None)
        self.household.appliances_on_lan = False
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _member(
        self,
        device_id: str,
        roles: list[str],
        data_dir: Path,
        verifier: Verifier,
        **options: Any,
    ) -> HouseholdClient:
        key: Signer = await asyncio.to_thread(load_key, data_dir)
        body = {"device_id": device_id, "device_key": key.public.public_key, "roles": roles}
        wire = await self.issue(self.household_id, body)
        return HouseholdClient(
            credentials(wire, key, verifier),
            verifier,
            host=self.host,
            interfaces=(self.host,),
            tick_s=self.tick_s,
            **options,
        )

    async def _join(self, run: DeviceRun, verifier: Verifier) -> None:
        role = ROLE_OF_PROFILE.get(run.spec.profile, "member")
        settings = run.agent.settings
        agent = run.agent
        client = await self._member(
            run.spec.device_id,
            [role],
            settings.data_dir,
            verifier,
            personalization=lambda: agent.consent.personalization,
            counters=agent.parts.metrics.counters,
            ranker=None
            if settings.profile.ranking == "thin"
            else model_ranker(lambda: agent.parts.slot.current),
            caps=policy_caps(settings, lambda: agent.parts.decisions.household_policy),
        )
        await self._stack.enter_async_context(client)
        agent.attach_household(client)
        self.clients[run.spec.device_id] = client

    async def _appliance(self, category: str, need: float, verifier: Verifier) -> None:
        device_id = appliance_id(self.household_id, category)
        folder = self.household.data_dir / "appliances" / device_id
        client = await self._member(device_id, ["appliance"], folder, verifier)
        await self._stack.enter_async_context(client)
        client.report_levels({category: round(need, 3)})
        self.appliances[device_id] = client

    async def crash_coordinator(self) -> str | None:
        """The coordinator's household client stopped as a killed process would
        (`HouseholdClient.crash`); its agent runs on alone. Its device id, or None when no
        device coordinates now."""
        device_id = self.coordinator()
        if device_id is None:
            return None
        run = next(r for r in self.household.runs if r.spec.device_id == device_id)
        client = self.clients.pop(device_id)
        run.agent.attach_household(None)
        await client.crash()
        self.crashed[device_id] = run
        return device_id

    async def restart(self) -> list[str]:
        """Every crashed device back on the LAN with a new client (a new process: empty
        state, a new membership from the gateway); their ids."""
        assert self._verifier is not None, "not entered"
        back = list(self.crashed)
        for device_id in back:
            await self._join(self.crashed.pop(device_id), self._verifier)
        return back

    async def spoof(self) -> str | None:
        """A rogue hub on the segment (the fleet's `coordinator-spoof`): it holds the
        household's secret (leaked: its adverts carry the right hint and proof) but a
        membership another key signed; the members' handshake must refuse it before
        anything but a nonce is sent (`household_coordinators_refused`). Its device id."""
        some = next(iter(self.clients.values()), None)
        if some is None or self.rogue is not None:
            return None
        forger = Signer.generate("forger")
        device_id = f"{self.household_id}-rogue"[:64]
        folder = self.household.data_dir / "rogue" / device_id
        key: Signer = await asyncio.to_thread(load_key, folder)
        secret = some.creds.secret
        wire = membership(forger, self.household_id, device_id, key, ["hub"], secret)
        verifier = Verifier.from_public_keys([forger.public])
        rogue = HouseholdClient(
            credentials(wire, key, verifier),
            verifier,
            host=self.host,
            interfaces=(self.host,),
            tick_s=self.tick_s,
        )
        await rogue.start()
        self.rogue = rogue
        return device_id

    async def unspoof(self) -> dict[str, int]:
        """The rogue gone; what it got: the members that reached its LAN API beyond the
        handshake, the contributions and exposures they gave it (0s are right)."""
        rogue, self.rogue = self.rogue, None
        if rogue is None:
            return {}
        got = {"rogue_members_seen": 0, "rogue_contributions": 0, "rogue_exposures": 0}
        if rogue.server is not None:
            state, own = rogue.server.state, rogue.creds.membership.device_id
            got["rogue_members_seen"] = len(set(state.seen) - {own})
            got["rogue_contributions"] = len(set(state.contributions) - {own})
            got["rogue_exposures"] = len(state.exposures)
        await rogue.close()
        return got

    async def share(self) -> None:
        """Each device's category counts of the last 24 h, sent only where its
        personalization consent allows (the client withdraws them otherwise)."""
        now = utcnow()
        for run in self.household.runs:
            client = self.clients.get(run.spec.device_id)
            if client is None:
                continue
            if not run.agent.consent.personalization:
                client.withdraw()
                continue
            profile = run.agent.settings.profile
            ctx = run.agent.parts.windows.context(now, profile.name, profile.timezone, True)
            client.contribute(dict(ctx.category_24h), ctx.member_tier)

    async def settle(self, timeout: float) -> bool:
        """Every device and appliance has a session with the same coordinator."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        everyone = [*self.clients.values(), *self.appliances.values()]
        while loop.time() < deadline:
            seen = {c.connected_to for c in everyone}
            if len(seen) == 1 and None not in seen:
                for c in everyone:
                    await c.sync()
                return True
            await asyncio.sleep(0.05)
        return False

    def coordinator(self) -> str | None:
        """The device id of the coordinator everyone agrees on, else None."""
        for device_id, client in self.clients.items():
            if client.server is not None and client.server.serving:
                return device_id
        return None

    def report(self) -> dict[str, Any]:
        """What the demo shows of the household on the LAN; `caps`: the household caps its
        coordinator enforces (the cloud's household section over the defaults)."""
        tv = next((c for d, c in self.clients.items() if "-tv" in d), None)
        ctx = tv.household_context() if tv is not None else None
        counters: dict[str, int] = {}
        for c in [*self.clients.values(), *self.appliances.values()]:
            for name, value in c.counters.items():
                if name.startswith("household_"):
                    counters[name] = counters.get(name, 0) + value
        coordinator = self.coordinator()
        server = self.clients[coordinator].server if coordinator is not None else None
        caps = server.state.caps if server is not None else None
        return {
            "coordinator": coordinator,
            "caps": None
            if caps is None
            else {
                "offer_window_s": caps.offer_window_s,
                "per_day": caps.per_day,
                "quiet": [[q.start, q.end] for q in caps.quiet],
                "utc_offset_s": caps.utc_offset_s,
            },
            "appliances": sorted(self.appliances),
            "tv_consumable_need": dict(ctx.consumable_need) if ctx else {},
            "active_devices": ctx.active_devices if ctx else 0,
            "counters": counters,
        }
