"""`Parts`: what the composition root (`agent.runtime.build`) made, every part present."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.config import AgentSettings
from agent.decide.decisions import Decisions
from agent.features.windows import FeatureWindows
from agent.intake.consent import ConsentBox
from agent.intake.explanations import ExplainReporter
from agent.intake.service import Intake
from agent.link.commands import Commands
from agent.link.transport import Transport
from agent.link.uplink import Uplink
from agent.model.slot import ModelSlot
from agent.model.update import ModelUpdater
from agent.offers.book import OfferBook
from agent.offers.claims import Claims
from agent.offers.members import MemberKeeper
from agent.offers.policies import PolicyKeeper
from agent.offers.social import Social
from agent.offers.trust import TrustKeeper
from agent.offers.waves import LiveSale
from agent.runtime.loops import MemoryWatch, StateReport
from agent.runtime.memory import MemoryBudget
from agent.runtime.metrics import Metrics
from agent.runtime.router import Router
from agent.runtime.service import AgentService
from agent.store.core import Store
from daemonkit.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class Parts:
    """A built agent: every part, none missing."""

    settings: AgentSettings
    clock: Callable[[], float]
    metrics: Metrics
    memory: MemoryBudget
    store: Store
    slot: ModelSlot
    updates: ModelUpdater
    consent: ConsentBox
    windows: FeatureWindows
    offers: OfferBook
    trust: TrustKeeper
    decisions: Decisions
    link: Transport
    uplink: Uplink
    claims: Claims
    commands: Commands
    router: Router
    intake: Intake
    service: AgentService
    report: StateReport
    memory_watch: MemoryWatch
    loops: Supervisor
    policies: PolicyKeeper
    """The operators' policy documents in force (issue 18)."""
    explanations: ExplainReporter
    """Why campaigns were or were not shown, into the outbox (issue 18)."""
    members: MemberKeeper
    """The member's signed tier and balance (issue 19)."""
    live: LiveSale
    """Live sales: the gateway's clock, sealed and sold-out offers (issue 19)."""
    social: Social
    """Group buys and price cuts (issue 19)."""
