"""What a running agent reports about itself: status, loss accounting, metric gauges."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent import AGENT_VERSION
from agent.link.session import LinkState

if TYPE_CHECKING:
    from agent.runtime.agent import Agent


def status_of(agent: Agent) -> dict[str, Any]:
    """`Agent.status`: identity, link, outbox, model, offers, consent, counters, accounting."""
    return {
        "device_id": agent.settings.device_id,
        "profile": agent.settings.profile.name,
        "agent_version": AGENT_VERSION,
        "link": agent.link_state,
        "outbox_depth": agent.store.depth,
        "outbox_bytes": agent.store.outbox_bytes,
        "outbox_max_bytes": agent.store.outbox_max_bytes,
        "outbox_id": agent.store.outbox_id,
        "in_flight": agent.uplink.in_flight if agent.uplink is not None else 0,
        "model_version": agent.model_version,
        "offers": len(agent.offers) if agent.offers is not None else 0,
        "consent": agent.consent.to_json(),
        "counters": dict(agent.metrics.counters),
        "model_update": _model_update(agent),
        "accounting": agent.accounting(),
        "memory": agent.memory.to_json(),
    }


def accounting_of(agent: Agent) -> dict[str, Any]:
    """`Agent.accounting`: persisted totals for loss accounting (they survive crashes)."""
    drops = agent.store.drops
    return {
        "evicted": drops.get("evicted", 0),
        "expired": drops.get("expired", 0),
        "withdrawn": drops.get("withdrawn", 0),
        "refused": drops.get("refused", 0),
        "outcomes_withdrawn": drops.get("outcomes_withdrawn", 0),
        "forgotten": drops.get("forgotten", 0),
        "aggregate_unacked": agent.store.counters.aggregate_unacked,
        "mode": agent.uplink.mode() if agent.uplink is not None else None,
        "uplink_bytes_today": agent.uplink.used_today() if agent.uplink is not None else 0,
        "holding": agent.uplink.holding if agent.uplink is not None else False,
    }


def gauges_of(agent: Agent) -> dict[str, float]:
    """The gauges `agent.runtime.metrics` samples: outbox, batches in flight, link, offers held,
    resident set (last sample) and the profile's memory budget."""
    return {
        "outbox_depth": float(agent.store.depth),
        "outbox_bytes": float(agent.store.outbox_bytes),
        "in_flight_batches": float(agent.uplink.in_flight if agent.uplink else 0),
        "link_connected": 1.0 if agent.link_state == LinkState.CONNECTED else 0.0,
        "offers_held": float(len(agent.offers) if agent.offers is not None else 0),
        "rss_bytes": float(agent.memory.rss),
        "memory_budget_bytes": float(agent.memory.budget_bytes),
    }


def _model_update(agent: Agent) -> dict[str, Any] | None:
    """The updater's state plus the report the gateway last got (`State.model_update`)."""
    updates = agent.model_updates
    if updates is None:
        return None
    report = updates.report
    return {
        **updates.state,
        "report": report.model_dump(mode="json", exclude_none=True) if report else None,
    }
