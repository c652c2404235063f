"""Benchmark records, timing helpers, and the writers of latest.json and docs/benchmarks.md."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from protocol.ids import format_time, utcnow


@dataclass(frozen=True, slots=True)
class Record:
    """One figure: `value` in `unit`, beside `baseline` measured in the same run."""

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["ratio"] = round(self.ratio, 4)
        out["value"] = round(self.value, 4)
        out["baseline_value"] = round(self.baseline_value, 4)
        return out


def rate(func: Callable[[], object], items: int, *, min_seconds: float = 0.5) -> float:
    """Items per second of `func` (which handles `items` items), repeated for at least
    `min_seconds`, best of the repeats (the least disturbed by a noisy neighbour)."""
    best = 0.0
    spent = 0.0
    rounds = 0
    while spent < min_seconds or rounds < 3:
        start = time.perf_counter()
        func()
        took = time.perf_counter() - start
        spent += took
        rounds += 1
        best = max(best, items / took if took > 0 else 0.0)
    return best


def percentiles(samples: list[float], *points: float) -> list[float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=1000, method="inclusive") if len(ordered) > 1 else []
    out = []
    for p in points:
        if not cuts:
            out.append(ordered[0] if ordered else float("nan"))
        else:
            out.append(cuts[min(len(cuts) - 1, max(0, round(p * 1000) - 1))])
    return out


def read_records(results: Path) -> list[Record]:
    """The records of an earlier `write_results` (none when the file is missing)."""
    if not results.exists():
        return []
    payload = json.loads(results.read_text(encoding="utf-8"))
    fields = ("name", "value", "unit", "baseline", "baseline_value", "note")
    return [Record(**{k: r[k] for k in fields if k in r}) for r in payload.get("records", [])]


def merged(earlier: list[Record], fresh: list[Record]) -> list[Record]:
    """`earlier` with each figure measured again replaced in place, new ones at the end: a
    run of some suites (`edgemart bench --only ...`) keeps the others' figures."""
    by_name = {r.name: r for r in fresh}
    out = [by_name.pop(r.name, r) for r in earlier]
    return out + [r for r in fresh if r.name in by_name]


def write_results(records: list[Record], results: Path, table: Path) -> None:
    meta = {
        "generated_at": format_time(utcnow()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "records": [r.to_json() for r in records]}
    results.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Benchmarks",
        "",
        "Written by `edgemart bench` (or `python -m bench`) from `bench/results/latest.json`.",
        "Each figure is measured beside its baseline in the same run on a shared, noisy",
        "machine: read the ratio; absolute numbers drift.",
        "",
        f"Run {meta['generated_at']} on {meta['machine']}, Python {meta['python']}.",
        "",
        "| figure | value | unit | baseline | baseline value | ratio | note |",
        "| --- | ---: | --- | --- | ---: | ---: | --- |",
    ]
    lines += [
        f"| `{r.name}` | {r.value:,.4g} | {r.unit} | {r.baseline} | {r.baseline_value:,.4g} "
        f"| {r.ratio:.3g} | {r.note} |"
        for r in records
    ]
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
