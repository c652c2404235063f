"""The agent daemon's public seam: `Agent`, what apps, the local API, the simulators and the
tests call, thin over the `Parts` the composition root (`agent.runtime.build`) makes; and
`run_agent`, the process around it."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agent.api.local import LocalApi
from agent.api.owners import ensure_admin
from agent.config import AgentSettings
from agent.decide.decision import Decision, RankedOffer
from agent.decide.decisions import Decisions
from agent.decide.remote import RemoteRanker
from agent.decide.rules import CapCounts, QuietWindow
from agent.errors import AgentError, NotStarted, UnknownOffer
from agent.features.household import HouseholdSource
from agent.features.windows import FeatureWindows
from agent.intake.consent import ConsentState
from agent.intake.validate import SignalIn
from agent.link.session import Link
from agent.link.transport import Transport, TransportFactory
from agent.link.uplink import Uplink
from agent.model.scoring import Model
from agent.model.update import ModelUpdater
from agent.offers.book import OfferBook
from agent.offers.claims import Claims
from agent.provisioning.flow import ensure_identity
from agent.runtime.build import build, start_loops
from agent.runtime.memory import MemoryBudget
from agent.runtime.metrics import Metrics
from agent.runtime.parts import Parts
from agent.runtime.status import accounting_of, status_of
from agent.store.core import Store
from agent.store.idempotency import Stored
from agent.store.thread import StorePool
from daemonkit.notify import Notifier, feed_watchdog

if TYPE_CHECKING:
    from agent.household.client import HouseholdClient

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 2.0


class Agent:
    """One device's agent. `async with Agent(settings) as agent:` runs it; exit shuts down.

    Graceful exit: the local API stops taking requests, waiting data is flushed to the
    gateway (bounded wait for acks), the retained state goes `offline`, loops are cancelled,
    the store is closed. Anything not acknowledged stays in the outbox for the next run.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
        owns_process: bool = False,
        transport: TransportFactory = Link,
        store_pool: StorePool | None = None,
        household: HouseholdSource | None = None,
        remote: RemoteRanker | None = None,
    ) -> None:
        """`owns_process`: this agent is the process (`edgemart agent run`), so the profile's
        memory budget judges the process's resident set; in a simulator or a test runner,
        where one process holds many agents, the resident set is only reported.
        `clock` (wall) and `timer` (monotonic: resends, pacing): see `agent.runtime.build`.
        `transport`: makes the broker link (`Link`; a test may pass one needing no broker).
        `store_pool`: store threads shared with other agents of the process (the simulator's
        thousands; None: a thread of its own).
        `household`, `remote`: the household's context and, on a thin device, who ranks for it
        (`agent.runtime.build`; the LAN side, `agent.household`, makes them)."""
        self._settings = settings
        self._clock = clock
        self._timer = timer
        self._owns_process = owns_process
        self._transport = transport
        self._store_pool = store_pool
        self._lan = (household, remote)
        self._parts: Parts | None = None
        """Made on entry, kept after exit (counters, status and the model stay readable)."""
        self._running = False
        self.api: LocalApi | None = None
        self.household: HouseholdClient | None = None
        self._owns_household = False
        """The household on the LAN (`agent.household.join`), when it joined one."""
        """The local API, when the settings give it a port (`settings.api_port`)."""

    # ------------------------------------------------------------ the parts

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            raise NotStarted("the agent is not started")
        return self._parts

    @property
    def settings(self) -> AgentSettings:
        return self._parts.settings if self._parts is not None else self._settings

    @property
    def metrics(self) -> Metrics:
        return self.parts.metrics

    @property
    def store(self) -> Store:
        return self.parts.store

    @property
    def memory(self) -> MemoryBudget:
        return self.parts.memory

    @property
    def link(self) -> Transport:
        return self.parts.link

    @property
    def uplink(self) -> Uplink:
        return self.parts.uplink

    @property
    def offers(self) -> OfferBook:
        return self.parts.offers

    @property
    def claims(self) -> Claims:
        return self.parts.claims

    @property
    def model_updates(self) -> ModelUpdater:
        return self.parts.updates

    @property
    def decisions(self) -> Decisions:
        return self.parts.decisions

    @property
    def windows(self) -> FeatureWindows:
        return self.parts.windows

    @property
    def consent(self) -> ConsentState:
        return self.parts.consent.state

    @property
    def model(self) -> Model | None:
        return self.parts.slot.current

    @property
    def last_model_error(self) -> str | None:
        return self.parts.slot.last_error

    @property
    def caps(self) -> CapCounts:
        """Today's impression counts the daily caps check (`agent.decide.decisions`)."""
        return self.parts.decisions.caps

    @property
    def quiet(self) -> tuple[QuietWindow, ...]:
        """The profile's quiet hours (offers held while one is on)."""
        return self.parts.decisions.quiet

    @quiet.setter
    def quiet(self, windows: tuple[QuietWindow, ...]) -> None:
        self.parts.decisions.quiet = windows

    @property
    def counters(self) -> dict[str, int]:
        return self.parts.metrics.counters

    @property
    def decision_ms(self) -> deque[float]:
        return self.parts.metrics.decision_ms

    @property
    def api_port(self) -> int | None:
        return self.api.port if self.api is not None else None

    @property
    def model_version(self) -> int | None:
        return self._parts.slot.version if self._parts is not None else None

    # ------------------------------------------------------------ use cases

    async def accept_signals(self, signals: list[dict[str, Any]]) -> list[str]:
        """Validate and store signals; their ids once COMMITTED (`agent.intake.service`)."""
        return await self.parts.intake.accept_signals(signals)

    async def accept_parsed(self, signals: list[SignalIn]) -> list[str]:
        return await self.parts.intake.accept_parsed(signals)

    async def set_consent(self, purposes: dict[str, bool]) -> ConsentState:
        """Store the user's decision for all three purposes (versioned, timed)."""
        return await self.parts.intake.set_consent(purposes)

    async def decide(self, surface: str, limit: int = 3, *, explain: bool = False) -> Decision:
        """One local ranking decision for `surface` (see `agent.decide.ranking.decide`)."""
        return await self.parts.service.decide(surface, limit, explain=explain)

    def attach_household(self, client: HouseholdClient | None) -> None:
        """Join a household through a client its caller owns (the simulators), or leave it
        (None): decisions ask its caps, and `household` (the `HouseholdSource` the feature
        side reads) is it."""
        self.household = client
        self._owns_household = False
        self.parts.decisions.household = client
        self.parts.service.use_household(client)
        self.parts.service.use_remote(client)  # a thin device ranks through it

    async def rank(self, surface: str, limit: int = 3) -> list[RankedOffer]:
        return (await self.decide(surface, limit)).ranked

    async def record_outcome(self, offer_id: str, kind: str, surface: str) -> str:
        """Store an outcome (impression, click, dismiss, conversion) of a held offer; its id.

        It carries the score, model version, variant and features of the last decision that
        returned the offer. A conversion is attributed (`decide.attribution`) to the campaign's
        newest click or impression within the profile's windows and carries that exposure's
        facts; an unattributed one is not reported (`""` is returned, counted).
        """
        result = await self.record_outcome_detail(offer_id, kind, surface)
        return str(result.get("id") or "")

    async def record_outcome_detail(self, offer_id: str, kind: str, surface: str) -> dict[str, Any]:
        """`record_outcome`, answering `{"id", "attributed_to"?}` or `{"id": None, "reason"}`."""
        return await self.parts.service.record_outcome(offer_id, kind, surface)

    async def claim(self, offer_id: str) -> tuple[dict[str, Any], bool]:
        """Start (or return the one existing) claim of a held limited offer; True when new."""
        if self._parts is None:
            raise UnknownOffer(offer_id)
        return await self._parts.service.claim(offer_id)

    async def get_claim(self, claim_id: str) -> dict[str, Any] | None:
        return await self.parts.claims.get(claim_id)

    async def social_request(
        self, kind: str, verb: str, *, offer_id: str | None = None, code: str | None = None
    ) -> dict[str, Any]:
        """Start or join a group, start or help a cut (`agent.offers.social`)."""
        if self._parts is None:
            raise UnknownOffer(offer_id or "")
        row = await self._parts.social.request(kind, verb, offer_id=offer_id, code=code)
        return await self.social_show(row["id"]) or {"request_id": row["id"]}

    async def social_show(self, ident: str) -> dict[str, Any] | None:
        return await self.parts.social.show(ident)

    async def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """Outbox rows that could not be sent, newest first (`agent.store.quarantine`)."""
        store = self.parts.store
        return await store.call(store.quarantine.rows, limit)

    async def find_request(self, route: str, key: str) -> Stored | None:
        """The committed request of an `Idempotency-Key` on `route` (24 h), if any."""
        store = self.parts.store
        return await store.call(store.idempotency.find, route, key)

    async def replace_model(self, onnx_path: Path, manifest: dict[str, Any]) -> bool:
        """Serve another model, or refuse it and keep the current one (`AgentService`)."""
        return await self.parts.service.replace_model(onnx_path, manifest)

    def _swap_model(self, model: Model) -> None:
        """What the updater does after a passed health check (`ModelSlot.swap`)."""
        self.parts.slot.swap(model)

    async def check_memory(self) -> bool:
        """Sample the resident set against the budget and shed what can be shed when over."""
        return await self.parts.memory_watch.check()

    def status(self) -> dict[str, Any]:
        return status_of(self.parts)

    def accounting(self) -> dict[str, Any]:
        """Persisted totals for loss accounting (they survive crashes): signals dropped on
        purpose by reason, signals waiting in aggregates, and today's uplink bytes."""
        return accounting_of(self.parts)

    async def readiness(self) -> dict[str, Any]:
        """Ready: the broker link is up, the store answers a query, the disk has room for new
        data (`disk`: `ok` or `full`), every owned loop runs."""
        parts = self.parts
        link = parts.link.connected.is_set()
        try:
            store = await parts.store.call(parts.store.ping)
        except AgentError:
            store = False
        down = parts.loops.down()
        full = parts.store.space.full
        return {
            "ready": link and store and not down and not full,
            "link": link,
            "store": store,
            "disk": "full" if full else "ok",
            "loops_down": down,
        }

    async def wait_connected(self, timeout: float = 10.0) -> bool:
        """Wait until the MQTT link is up and subscribed; False on timeout."""
        if self._parts is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._parts.link.connected.wait()
        except TimeoutError:
            return False
        return True

    async def drain(self, timeout: float = 10.0) -> bool:  # the seam
        """Wait until every stored signal and outcome is acknowledged; False on timeout."""
        parts = self.parts
        deadline = time.monotonic() + timeout
        while True:
            if parts.store.depth == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            parts.uplink.poke(flush=True)
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Agent:
        # first start with a claim credential: get this device's identity (agent.provisioning)
        self._settings = await ensure_identity(self._settings)
        self._parts = await build(
            self._settings,
            clock=self._clock,
            timer=self._timer,
            transport=self._transport,
            owns_process=self._owns_process,
            store_pool=self._store_pool,
            household=self._lan[0],
            remote=self._lan[1],
        )
        self._running = True
        try:
            await self._start(self._parts)
        except BaseException:
            await self.close()
            raise
        return self

    async def _start(self, parts: Parts) -> None:
        # the all-scopes token of DATA_DIR/tokens/admin.token, made on the first start
        await asyncio.to_thread(ensure_admin, parts.settings.data_dir)
        start_loops(parts)
        s = parts.settings
        if s.api_port is not None or s.api_socket is not None:
            self.api = LocalApi(self, s.api_port, s.api_socket, s.api_socket_group)
            await self.api.start()
        self._owns_household = True
        if s.lan_host is not None:  # else no household: its code (zeroconf, numpy) stays out
            from agent.household import join as household_join  # noqa: PLC0415

            self.household = await household_join.join(
                parts.settings,
                personalization=lambda: parts.consent.state.personalization,
                contribution=partial(_contribution, parts),
                model=lambda: parts.slot.current,
                counters=parts.metrics.counters,
                policy=lambda: parts.decisions.household_policy,
            )
        if self.household is not None:
            parts.decisions.household = self.household
            parts.service.use_household(self.household)
            parts.service.use_remote(self.household)  # a thin device ranks through it
        await parts.memory_watch.page_out()  # what only start-up touched
        await parts.memory_watch.check()
        if not parts.memory.shared:
            parts.loops.start("memory", parts.memory_watch.run)
        log.info(
            "agent %s up (profile %s, model v%s, outbox %d)",
            parts.settings.device_id,
            parts.settings.profile.name,
            parts.slot.version,
            parts.store.depth,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        household, self.household = self.household, None
        if household is not None and self._owns_household:
            await household.close()  # its goodbye on the LAN
        if self.api is not None:
            await self.api.stop()
            self.api = None
        parts = self._parts
        if parts is None or not self._running:
            return
        self._running = False
        if parts.link.connected.is_set():
            if not await parts.uplink.flush(SHUTDOWN_FLUSH_S):
                log.info("shutting down with %d items unacknowledged", parts.store.depth)
            await parts.link.say_goodbye()
        await parts.updates.close()
        await parts.loops.close()
        await parts.store.close()


async def run_agent(
    settings: AgentSettings,
    on_ready: Callable[[Agent], None] | None = None,
    *,
    household: HouseholdSource | None = None,
    remote: RemoteRanker | None = None,
) -> None:
    """Run one agent until SIGTERM/SIGINT (or cancellation), then shut down gracefully.

    `on_ready(agent)` once it serves (the CLI prints its ready line). Under systemd
    (`Type=notify`, `deploy/edgemart-agent.service`) it says READY=1 then, and feeds the
    watchdog while every supervised loop runs (`daemonkit.notify.feed_watchdog`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            log.debug("cannot install a handler for %s", sig.name)
    try:
        async with Agent(settings, owns_process=True, household=household, remote=remote) as agent:
            if on_ready is not None:
                on_ready(agent)
            notifier = Notifier.from_env()
            if notifier is not None:
                notifier.ready(f"serving as {settings.device_id}")
            if notifier is not None and notifier.ping_every_s is not None:
                agent.parts.loops.start(
                    "watchdog", partial(feed_watchdog, notifier, agent.parts.loops.down)
                )
            await stop.wait()
            log.info("stopping on signal")
            if notifier is not None:
                notifier.stopping()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _contribution(parts: Parts) -> tuple[Mapping[str, int], int]:
    """What this device shares with its household (under personalization consent only): its
    category counts of the last 24 h and the member tier it knows."""
    profile = parts.settings.profile
    now = datetime.fromtimestamp(parts.clock(), UTC)
    ctx = parts.windows.context(now, profile.name, profile.timezone, True)
    return ctx.category_24h, ctx.member_tier
