"""`edgemart fleet merge REPORT...`: the reports of `edgemart fleet --shard K/N` runs summed
into the report of the whole fleet, loss accounting included (each shard accounts for its
own devices, so the sums are exact; the device digests XOR to the whole fleet's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulators.checker import AccountReport, digest_xor

SUMMED = (
    "devices",
    "households",
    "signals_accepted",
    "signals_stored",
    "signals_in_aggregates",
    "signals_dropped_on_purpose",
    "signals_lost",
    "signals_undelivered",
    "undelivered_device_count",
    "signals_duplicated",
    "signals_unexpected",
    "device_reconnects",
    "batches_resent",
    "gateway_duplicates_ignored",
    "procs",
)
MAX_NAMED = 50
MAX_LOST_IDS = 20


def load_reports(paths: list[Path]) -> list[dict[str, Any]]:
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a fleet report ({exc})") from None
    return reports


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report for the shards' union; ValueError when they are not the shards of one
    fleet (a shard twice or missing, different N, a report without its accounting, some
    against a shared gateway and others not, or against different ones)."""
    if not reports:
        raise ValueError("no reports to merge")
    labels = [r.get("shard") for r in reports]
    if any(label is None for label in labels):
        raise ValueError("every report must come from a --shard K/N run")
    parts = sorted((int(k), int(n)) for k, n in (str(label).split("/") for label in labels))
    n = parts[0][1]
    if parts != [(k, n) for k in range(1, n + 1)]:
        raise ValueError(f"not every shard of {n} exactly once: {', '.join(map(str, labels))}")
    gateways = sorted({str(r.get("gateway", "own process")) for r in reports})
    if len(gateways) > 1:
        raise ValueError(f"the shards ran against different gateways: {', '.join(gateways)}")
    merged: dict[str, Any] = {key: sum(int(r.get(key, 0)) for r in reports) for key in SUMMED}
    counts: dict[str, int] = {}
    for report in reports:
        if "accounting_counts" not in report:
            raise ValueError(f"shard {report['shard']}: no accounting_counts in its report")
        for key, value in report["accounting_counts"].items():
            counts[key] = counts.get(key, 0) + int(value)
    undelivered = sorted(
        (d for r in reports for d in r.get("undelivered_devices", [])),
        key=lambda d: (-int(d["signals"]), d["device"]),
    )
    books = AccountReport(
        accepted=counts.get("accepted", 0),
        stored=counts.get("stored", 0),
        aggregated=counts.get("aggregated", 0),
        evicted=counts.get("evicted", 0),
        expired=counts.get("expired", 0),
        withdrawn=counts.get("withdrawn", 0),
        lost=counts.get("lost", 0),
        overcounted=counts.get("overcounted", 0),
        duplicated=counts.get("duplicated", 0),
        unexpected=counts.get("unexpected", 0),
        undelivered=counts.get("undelivered", 0),
        undelivered_by_device=tuple((d["device"], int(d["signals"])) for d in undelivered),
    )
    merged.update(
        {
            "undelivered_devices": undelivered[:MAX_NAMED],
            "lost_ids_sample": [i for r in reports for i in r.get("lost_ids_sample", [])][
                :MAX_LOST_IDS
            ],
            "drained": all(bool(r.get("drained")) for r in reports),
            "accounting": books.line().replace(
                f"(still on {len(undelivered)}", f"(still on {counts.get('undelivered_devices', 0)}"
            ),
            "accounting_counts": counts,
            "device_digest": f"{digest_xor(r['device_digest'] for r in reports):064x}",
            "faults": {r["shard"]: r.get("faults", []) for r in reports},
            "cost": {r["shard"]: r["cost"] for r in reports if "cost" in r},  # each its own
            "broker": sorted({str(r.get("broker")) for r in reports}),
            "duration_s": max(float(r.get("duration_s", 0)) for r in reports),
            "start_s": max(float(r.get("start_s", 0)) for r in reports),
            "shard": None,
            "shards": n,
            "topic_root": sorted({str(r.get("topic_root")) for r in reports}),
            "gateway": gateways,
        }
    )
    return merged
