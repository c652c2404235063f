"""`edgemart bench` / `python -m bench`: run the benchmarks, write latest.json and the table."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench.record import Record, merged, read_records, write_results

ROOT = Path(__file__).resolve().parents[1]
SUITES = [
    # First: the agent's page-out cannot hand back a page another process maps, and the
    # later suites load onnxruntime, numpy and the rest into this process.
    "bench.rss_bench",
    "bench.thin_bench",
    "bench.idle_bench",
    "bench.sim_idle_bench",
    "bench.fleet_bench",
    "bench.protocol_bench",
    "bench.wire_bench",
    "bench.decision_bench",
    "bench.campaign_bench",
    "bench.model_bench",
    "bench.intake_bench",
    "bench.ingest_bench",
    "bench.pg_driver_bench",
    "bench.pg_ingest_bench",
    "bench.storm_bench",
    "bench.claims_pg_bench",
    "bench.workers_bench",
    "bench.capacity_bench",
    "bench.provision_bench",
    "bench.lan_bench",
    "bench.lift_bench",
    "bench.experiment_bench",
    "bench.waves_bench",
    "bench.trends_bench",
    "bench.social_bench",
]


def run(only: list[str] | None = None) -> list[Record]:
    records: list[Record] = []
    for name in SUITES:
        if only and not any(o in name for o in only):
            continue
        module = importlib.import_module(name)
        sys.stderr.write(f"bench: {name} ...\n")
        records.extend(module.run())
    return records


def cmd_bench(args: argparse.Namespace) -> int:
    records = run(args.only)
    out = Path(args.out)
    # `--only` re-measures some suites: their figures replace theirs, the rest stay
    kept = merged(read_records(out), records) if args.only else records
    write_results(kept, out, Path(args.table))
    for r in records:
        sys.stdout.write(
            f"{r.name:40s} {r.value:14,.4g} {r.unit:12s} ratio {r.ratio:.3g} vs {r.baseline}\n"
        )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only suites whose name contains this; their figures replace theirs in --out"
        " and --table, the other figures stay",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--table", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.set_defaults(func=cmd_bench)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_arguments(sub.add_parser("bench", help="run the benchmarks (bench/results/latest.json)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
