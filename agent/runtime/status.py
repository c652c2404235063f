"""What a running agent reports about itself: status, loss accounting, metric gauges."""

from __future__ import annotations

from typing import Any

from agent import AGENT_VERSION
from agent.link.session import LinkState
from agent.runtime.parts import Parts


def status_of(parts: Parts) -> dict[str, Any]:
    """`Agent.status`: identity, link, outbox, model, offers, consent, counters, accounting."""
    store = parts.store
    return {
        "device_id": parts.settings.device_id,
        "profile": parts.settings.profile.name,
        "agent_version": AGENT_VERSION,
        "link": str(parts.link.state),
        "broker": parts.link.broker,
        "outbox_depth": store.depth,
        "outbox_bytes": store.outbox_bytes,
        "outbox_max_bytes": store.outbox_max_bytes,
        "outbox_id": store.outbox_id,
        "disk": {**store.space.to_json(), "quota_bytes": store.quota_bytes},
        "quarantine": {"rows": store.drops.get("quarantined", 0)},
        "store": {
            "path": str(store.path),
            "replaced": store.replaced,
            "outbox_rotations": store.drops.get("outbox_rotations", 0),
        },
        "in_flight": parts.uplink.in_flight,
        "uplink": parts.uplink.acks.to_json(),
        "model_version": parts.slot.version,
        "policy": parts.policies.to_json(),
        "member": parts.members.to_json(),
        "live_sale": {
            "clock_offset_ms": round(parts.live.clock.offset_s * 1000, 1),
            "sold_out": sorted(parts.live.sold_out),
        },
        "offers": len(parts.offers),
        "trust": parts.trust.to_json(),
        "consent": parts.consent.state.to_json(),
        "counters": dict(parts.metrics.counters),
        "model_update": _model_update(parts),
        "accounting": accounting_of(parts),
        "memory": parts.memory.to_json(),
    }


def accounting_of(parts: Parts) -> dict[str, Any]:
    """`Agent.accounting`: persisted totals for loss accounting (they survive crashes)."""
    drops = parts.store.drops
    uplink = parts.uplink
    return {
        "evicted": drops.get("evicted", 0),
        "expired": drops.get("expired", 0),
        "withdrawn": drops.get("withdrawn", 0),
        "refused": drops.get("refused", 0),
        "outcomes_withdrawn": drops.get("outcomes_withdrawn", 0),
        "forgotten": drops.get("forgotten", 0),
        "quarantined": drops.get("quarantined", 0),
        "batches_refused": drops.get("batches_refused", 0),
        "aggregate_unacked": parts.store.counters.aggregate_unacked,
        "signals_held": parts.store.counters.signal_rows,
        "mode": uplink.mode(),
        "uplink_bytes_today": uplink.used_today(),
        "holding": uplink.holding,
    }


def gauges_of(parts: Parts) -> dict[str, float]:
    """The gauges `agent.runtime.metrics` samples: outbox, batches in flight, link, offers held,
    resident set (last sample) and the profile's memory budget."""
    return {
        "outbox_depth": float(parts.store.depth),
        "outbox_bytes": float(parts.store.outbox_bytes),
        "in_flight_batches": float(parts.uplink.in_flight),
        "link_connected": 1.0 if str(parts.link.state) == LinkState.CONNECTED else 0.0,
        "offers_held": float(len(parts.offers)),
        "trust_stale": 1.0 if parts.trust.stale() else 0.0,
        "rss_bytes": float(parts.memory.rss),
        "memory_budget_bytes": float(parts.memory.budget_bytes),
    }


def _model_update(parts: Parts) -> dict[str, Any]:
    """The updater's state plus the report the gateway last got (`State.model_update`)."""
    report = parts.updates.report
    return {
        **parts.updates.state,
        "report": report.model_dump(mode="json", exclude_none=True) if report else None,
    }
