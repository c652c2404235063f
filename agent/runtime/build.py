"""The agent's composition root: `build(settings, clock=..., transport=...) -> Parts` makes
every part in order, each with its collaborators passed by name, and `start_loops` hands the
background loops to the supervisor. `agent.runtime.agent.Agent` is the thin seam over `Parts`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from agent.config import AgentSettings
from agent.decide.decisions import Decisions
from agent.decide.remote import RemoteRanker
from agent.decide.rules import CapCounts
from agent.errors import ConfigError, ModelRejected, ScoringError
from agent.features.household import HouseholdSource
from agent.features.windows import FeatureWindows
from agent.intake.consent import ConsentBox, ConsentState
from agent.intake.explanations import ExplainReporter
from agent.intake.service import Intake
from agent.link.commands import Commands
from agent.link.session import Link
from agent.link.transport import TransportFactory
from agent.link.uplink import Uplink
from agent.model.files import load_kept
from agent.model.scoring import Model, load_default_model
from agent.model.slot import ModelSlot
from agent.model.update import ModelUpdater, UpdateConfig
from agent.offers.book import OfferBook, load_trust
from agent.offers.claims import Claims
from agent.offers.members import MemberKeeper
from agent.offers.policies import PolicyKeeper
from agent.offers.social import Social
from agent.offers.trust import TrustKeeper
from agent.offers.waves import LiveSale
from agent.runtime.loops import MemoryWatch, StateReport, maintenance
from agent.runtime.memory import MemoryBudget, sqlite_cache_kib
from agent.runtime.metrics import Metrics
from agent.runtime.parts import Parts
from agent.runtime.router import Fanout, Router, downlink_routes
from agent.runtime.service import AgentService
from agent.runtime.status import gauges_of
from agent.store.core import Store
from agent.store.thread import StorePool
from daemonkit.supervisor import Supervisor
from protocol.envelopes import TrustFile
from protocol.errors import ProtocolError
from protocol.ids import utcnow
from protocol.signing import Verifier
from protocol.topics import DEFAULT_ROOT

log = logging.getLogger(__name__)


async def build(
    settings: AgentSettings,
    *,
    clock: Callable[[], float],
    timer: Callable[[], float] = time.monotonic,
    transport: TransportFactory = Link,
    owns_process: bool = False,
    store_pool: StorePool | None = None,
    household: HouseholdSource | None = None,
    remote: RemoteRanker | None = None,
) -> Parts:
    """Make the agent's parts (the store opened, state loaded); nothing runs yet.

    `clock`: the wall clock of the store (TTLs, windows, budget days); tests travel.
    `timer`: the monotonic clock of resends and pacing (uplink ack timeouts and drain, claim
    resends); a test moves a `FakeClock` past a timeout instead of sleeping through it.
    `owns_process`: the profile's memory budget judges the process's resident set.
    `store_pool`: store threads shared with the process's other agents (the simulator).
    `household`: the household's shared context (`agent.features.household`; None: alone).
    `remote`: who ranks for a thin device (`ranking = "thin"`; None: priority ranking)."""
    try:
        trust = await asyncio.to_thread(load_trust, settings.trust)
        verifier = Verifier.from_public_keys(trust.keys)
    except (OSError, ProtocolError) as exc:
        raise ConfigError(f"bad trust file: {exc}", source=str(settings.trust)) from exc
    if settings.topic_root == DEFAULT_ROOT and trust.topic_root != DEFAULT_ROOT:
        settings = settings.model_copy(update={"topic_root": trust.topic_root})
    profile = settings.profile
    metrics = Metrics()
    memory = MemoryBudget(profile.budgets.memory_mb, shared=not owns_process)
    store = Store(
        settings.db_path,
        durability=profile.uplink.durability,
        disk_quota=profile.budgets.outbox_max_bytes,
        cache_kib=sqlite_cache_kib(profile.budgets.memory_mb),
        outbox_full=profile.budgets.outbox_full,
        seen_ids_max=settings.seen_ids_max,
        clock=clock,
        pool=store_pool,
    )
    await store.open()
    if store.rotated:
        metrics.inc("outbox_rotated")  # this start found the store copied here
    if store.replaced_now:
        metrics.inc("stores_replaced")  # this start replaced an unreadable store
    try:
        return await _build_on(
            settings,
            store,
            trust,
            verifier,
            metrics,
            memory,
            clock,
            timer,
            transport,
            (household, remote),
        )
    except BaseException:
        await store.close()
        raise


async def _build_on(  # noqa: PLR0917 - the order of the parts, in one place
    settings: AgentSettings,
    store: Store,
    pinned: TrustFile,
    verifier: Verifier,
    metrics: Metrics,
    memory: MemoryBudget,
    clock: Callable[[], float],
    timer: Callable[[], float],
    transport: TransportFactory,
    lan: tuple[HouseholdSource | None, RemoteRanker | None],
) -> Parts:
    profile = settings.profile
    thin = profile.ranking == "thin"
    slot = ModelSlot()
    if thin:
        log.info("thin device: ranked by the household's coordinator, else by priority")
    else:
        try:
            slot.current = await asyncio.to_thread(load_default_model)
            metrics.inc("models_loaded")  # every model loaded counts: default, kept, rollouts
        except ModelRejected as exc:
            log.error("no usable model, ranking by priority: %s", exc)  # noqa: TRY400
    models_dir = settings.data_dir / "models"
    state_changed = asyncio.Event()
    updates = ModelUpdater(
        UpdateConfig(
            device_id=settings.device_id,
            profile=profile.name,
            models_dir=models_dir,
            scoring_budget_ms=profile.budgets.scoring_cpu_ms,
            candidates=profile.budgets.max_candidates,
            cohorts=tuple(profile.cohorts),
            serves_models=not thin,
        ),
        verifier,
        metrics,
        running=slot.get,
        swap=slot.swap,
        on_report=state_changed.set,
    )
    await updates.open()
    # the last good update, else the newest good one kept below it, else the default
    if not thin:
        current, previous = await asyncio.to_thread(load_kept, models_dir, updates.refused)
        metrics.inc("models_loaded", sum(m is not None for m in (current, previous)))
        if current is not None:
            slot.restore(current, previous)
    defaults = profile.consent
    consent = ConsentBox(
        ConsentState(defaults.analytics, defaults.personalization, defaults.marketing)
    )
    for row in await store.call(store.consent.load):
        consent.restore(row.purpose, row.granted, row.version, row.updated_at)
    windows = FeatureWindows.load(await store.call(store.buckets.load))
    offers = OfferBook(verifier, store, metrics)
    report = StateReport(settings, slot=slot, updates=updates, changed=state_changed)
    router = Router({})
    on_connected = Fanout()
    link = transport(
        settings,
        birth=report.birth,
        on_message=router.dispatch,
        on_connected=on_connected,
        metrics=metrics,
    )
    uplink = Uplink(
        settings,
        store,
        link,
        metrics,
        consent=consent.get,
        model_version=slot.current_version,
        verifier=verifier,
        timer=timer,
    )
    await uplink.start()

    def model_failed(model: Model, error: ScoringError) -> Model | None:
        """A model failed at run time: back to the last good one, reported by the updater."""
        good, rolled_back = slot.failed(model, str(error))
        if rolled_back:
            metrics.inc("models_rejected")
            updates.rolled_back(model, good, str(error))
        return good

    decisions = Decisions(
        settings,
        store,
        metrics,
        on_outcome=partial(uplink.poke, flush=True),  # outcomes go up at once
        on_model_failure=model_failed,
    )

    def drop_revoked_model(revoked: frozenset[str]) -> None:
        """A model whose manifest a revoked key signed stops running: back to the last good
        one not signed by it (else the default, else priority ranking)."""
        model = slot.get()
        while model is not None and model.manifest is not None and model.manifest.kid in revoked:
            model = model_failed(
                model, ScoringError(f"manifest signed by revoked key {model.manifest.kid}")
            )

    trust = TrustKeeper(pinned, verifier, store, metrics, offers, on_revoked=drop_revoked_model)
    await trust.load()  # the key list taken last run: before anything verifies
    policies = PolicyKeeper(
        settings, verifier, store, metrics, decisions, on_change=state_changed.set
    )
    await policies.load()  # the operators' caps hold from the first decision, offline too
    report.policy_version = lambda: policies.version
    await offers.load()
    members = MemberKeeper(settings.device_id, verifier, store, metrics)
    await members.load()  # the signed tier ranks from the first decision, offline too
    decisions.member = members
    live = LiveSale(
        profile.cohorts,
        verifier,
        metrics,
        local=lambda: datetime.fromtimestamp(clock(), UTC),  # the agent's wall clock
        on_change=lambda: claims.wake(),  # noqa: PLW0108 - claims is made below
        device_id=settings.device_id,
    )
    today = decisions.local_day(utcnow())
    decisions.caps = CapCounts.load(await store.call(store.decisions.cap_counts, today), today)
    claims = Claims(
        settings,
        store,
        verifier,
        metrics,
        link=link,
        offer=offers.get,
        stale_trust=trust.stale,
        timer=timer,
        held_back=live.refusal,
        turn=live.turn,
    )
    await claims.start()

    def offer_type(offer_id: str) -> tuple[str, str] | None:
        held = offers.get(offer_id)
        return None if held is None else (held.type, held.campaign_id)

    social = Social(
        settings, store, verifier, metrics, link=link, offer_type=offer_type, timer=timer
    )

    async def forgotten(removed: dict[str, int]) -> None:
        """A `forget` was committed: drop what memory still holds of the erased data."""
        windows.reset()
        decisions.forget(utcnow())
        claims.refused = frozenset()
        metrics.inc("signals_forgotten", removed.get("signals", 0))

    commands = Commands(settings.device_id, store, verifier, metrics, on_forget=forgotten)
    router.routes.update(
        downlink_routes(
            uplink=uplink,
            offers=offers,
            updates=updates,
            claims=claims,
            commands=commands,
            trust=trust,
            policies=policies,
            members=members,
            live=live,
            social=social,
        )
    )
    on_connected.add(uplink.on_connected)
    on_connected.add(claims.on_connected)
    on_connected.add(social.on_connected)
    intake = Intake(
        settings,
        store=store,
        windows=windows,
        consent=consent,
        metrics=metrics,
        mode=uplink.mode,
        poke=uplink.poke,
    )
    parts = Parts(
        settings=settings,
        clock=clock,
        metrics=metrics,
        memory=memory,
        store=store,
        slot=slot,
        updates=updates,
        consent=consent,
        windows=windows,
        offers=offers,
        trust=trust,
        decisions=decisions,
        link=link,
        uplink=uplink,
        claims=claims,
        commands=commands,
        router=router,
        intake=intake,
        service=AgentService(
            settings,
            metrics=metrics,
            consent=consent,
            windows=windows,
            slot=slot,
            offers=offers,
            decisions=decisions,
            claims=claims,
            household=lan[0],
            remote=lan[1] if thin else None,
            live=live,
        ),
        report=report,
        memory_watch=MemoryWatch(settings, budget=memory, metrics=metrics, store=store, slot=slot),
        loops=Supervisor(
            f"agent-{settings.device_id}",
            restart_on_return=True,
            on_restart=metrics.count_loop_restart,
        ),
        policies=policies,
        members=members,
        live=live,
        explanations=ExplainReporter(
            settings,
            decisions.explanations,
            store=store,
            consent=consent,
            metrics=metrics,
            held=uplink.degraded,
            poke=uplink.poke,
        ),
        social=social,
    )
    metrics.add_gauges(partial(gauges_of, parts))
    return parts


def start_loops(parts: Parts) -> None:
    """Hand every background loop to the supervisor (memory watch: `start_memory_watch`)."""
    loops = parts.loops
    loops.start("link", parts.link.run)
    loops.start("uplink", parts.uplink.run)
    loops.start(
        "maintenance",
        partial(maintenance, parts.store, parts.metrics, parts.settings, parts.decisions.local_day),
    )
    loops.start("claims", parts.claims.run)
    loops.start("social", parts.social.run)
    loops.start("state", partial(parts.report.republish, parts.link))
    loops.start("explanations", parts.explanations.run)
