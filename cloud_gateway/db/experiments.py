"""SQL of model experiments: their rows, the decision taken once, and each arm's figures
counted from the outcomes devices logged with their model version.

Plain functions over a session, run on the store thread: `await db.call(running)`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from cloud_gateway.db.backend import Session
from cloud_gateway.errors import Conflict
from cloud_gateway.registry.experiment_stats import ArmCounts

COLUMNS = (
    "id",
    "control",
    "candidate",
    "cohort",
    "share",
    "metric",
    "min_impressions",
    "alpha",
    "max_hours",
    "mde",
    "state",
    "started_at",
    "started_by",
)


def insert_experiment(store: Session, row: dict[str, Any]) -> None:
    """A new running experiment; Conflict when its candidate already had one."""
    with store.transaction():
        if store.one("SELECT id FROM model_experiments WHERE candidate = ?", [row["candidate"]]):
            raise Conflict(f"model v{row['candidate']} already had an experiment")
        store.conn.execute(
            f"INSERT INTO model_experiments ({', '.join(COLUMNS)})"  # noqa: S608 - constants
            f" VALUES ({', '.join('?' for _ in COLUMNS)})",
            [row[c] for c in COLUMNS],
        )


def delete_experiment(store: Session, experiment_id: str) -> None:
    """Undo an experiment whose rollout could not start."""
    with store.transaction():
        store.conn.execute(
            "DELETE FROM model_experiments WHERE id = ? AND state = 'running'", [experiment_id]
        )


def running_on(store: Session, versions: list[int]) -> dict[str, Any] | None:
    """A running experiment with one of `versions` as control or candidate."""
    for version in versions:
        row = store.one(
            "SELECT * FROM model_experiments WHERE state = 'running'"
            " AND (control = ? OR candidate = ?)",
            [version, version],
        )
        if row is not None:
            return row
    return None


def experiments(store: Session, state: str | None = None) -> list[dict[str, Any]]:
    if state is None:
        return store.rows("SELECT * FROM model_experiments ORDER BY started_at, id")
    return store.rows(
        "SELECT * FROM model_experiments WHERE state = ? ORDER BY started_at, id", [state]
    )


def of_candidate(store: Session, version: int) -> dict[str, Any] | None:
    return store.one("SELECT * FROM model_experiments WHERE candidate = ?", [version])


def get_experiment(store: Session, experiment_id: str) -> dict[str, Any] | None:
    return store.one("SELECT * FROM model_experiments WHERE id = ?", [experiment_id])


def record_decision(store: Session, experiment_id: str, decision: dict[str, Any]) -> bool:
    """Close a running experiment; False when it was no longer running (decided elsewhere).
    An operator's stop also keeps `stopped_by`, `stop_outcome` and `stop_reason`."""
    with store.transaction():
        cur = store.conn.execute(
            "UPDATE model_experiments SET state = ?, verdict = ?, decided_at = ?, arms = ?,"
            " stopped_by = ?, stop_outcome = ?, stop_reason = ?"
            " WHERE id = ? AND state = 'running'",
            [
                decision["state"],
                decision["verdict"],
                decision["decided_at"],
                json.dumps(decision["arms"], separators=(",", ":")),
                decision.get("stopped_by"),
                decision.get("stop_outcome"),
                decision.get("stop_reason"),
                experiment_id,
            ],
        )
        return bool(cur.rowcount)


def arm_counts(
    store: Session, versions: tuple[int, int], cohort: str, since: str
) -> dict[int, ArmCounts]:
    """Each version's devices, impressions, clicks, conversions and revenue (the converted
    offers' prices) in outcomes logged at or after `since` by devices of `cohort`
    (counterfactual impressions of holdout devices are not shown: left out)."""
    where = "o.model_version IN (?, ?) AND o.at >= ? AND o.counterfactual = 0"
    params: list[Any] = [versions[0], versions[1], since]
    join = ""
    if cohort.startswith("profile:"):
        join = " JOIN devices d ON d.device_id = o.device_id"
        where += " AND d.profile = ?"
        params.append(cohort[len("profile:") :])
    elif cohort != "all":
        join = " JOIN devices d ON d.device_id = o.device_id"
        where += " AND d.cohorts LIKE ?"
        params.append(f'%"{cohort}"%')
    devices = {
        int(r["model_version"]): int(r["n"])
        for r in store.rows(
            f"SELECT o.model_version, count(DISTINCT o.device_id) AS n FROM outcomes o{join}"  # noqa: S608
            f" WHERE {where} GROUP BY o.model_version",
            params,
        )
    }
    kinds: defaultdict[int, dict[str, int]] = defaultdict(dict)
    converted: defaultdict[int, list[tuple[str | None, str | None, int]]] = defaultdict(list)
    for r in store.rows(
        f"SELECT o.model_version, o.kind, o.campaign_id, o.offer_id, count(*) AS n"  # noqa: S608
        f" FROM outcomes o{join} WHERE {where}"
        " GROUP BY o.model_version, o.kind, o.campaign_id, o.offer_id",
        params,
    ):
        version, kind, n = int(r["model_version"]), str(r["kind"]), int(r["n"])
        kinds[version][kind] = kinds[version].get(kind, 0) + n
        if kind == "conversion":
            converted[version].append((r["campaign_id"], r["offer_id"], n))
    prices = _prices(store, {c for rows in converted.values() for c, _, _ in rows if c})
    out: dict[int, ArmCounts] = {}
    for version in versions:
        counts = kinds.get(version, {})
        revenue = sum(
            prices.get((c or "", o or ""), 0.0) * n for c, o, n in converted.get(version, [])
        )
        out[version] = ArmCounts(
            model_version=version,
            devices=devices.get(version, 0),
            impressions=counts.get("impression", 0),
            clicks=counts.get("click", 0),
            conversions=counts.get("conversion", 0),
            revenue=revenue,
        )
    return out


def _prices(store: Session, campaign_ids: set[str]) -> dict[tuple[str, str], float]:
    """(campaign id, offer id) -> the offer's price, from the campaigns' documents."""
    prices: dict[tuple[str, str], float] = {}
    for campaign_id in sorted(campaign_ids):
        row = store.one("SELECT doc FROM campaigns WHERE id = ?", [campaign_id])
        if row is None:
            continue
        for offer in json.loads(row["doc"]).get("offers", []):
            if isinstance(offer, dict) and isinstance(offer.get("id"), str):
                price = offer.get("price", 0.0)
                prices[campaign_id, offer["id"]] = (
                    float(price) if isinstance(price, int | float) else 0.0
                )
    return prices
