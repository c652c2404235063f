"""`edgemart demo`: run the whole loop on one machine and print (and write) its report."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from simulators import fleet
from simulators.demo import DemoOptions, run_demo, succeeded


def _print_report(report: dict[str, Any]) -> None:
    console = Console(stderr=False, width=110)
    verdict = "[green]OK[/green]" if succeeded(report) else "[red]FAILED[/red]"
    console.print(
        f"\n[bold]Edgemart demo[/bold] ({report['broker']}, {report['duration_s']} s): {verdict}"
    )
    totals = Table(show_header=False, box=None)
    for key in (
        "signals_accepted",
        "signals_stored",
        "signals_in_aggregates",
        "signals_lost",
        "signals_duplicated",
        "offers_pushed",
        "offers_verified",
        "offers_rejected",
        "forged_offers_sent",
        "decisions",
        "decision_p50_ms",
        "decision_p99_ms",
        "outcomes_recorded",
        "outcomes_stored",
    ):
        totals.add_row(key, str(report[key]))
    console.print(totals)
    devices = Table(
        "device",
        "signals in/stored",
        "offers ok/refused",
        "decisions",
        "clicks",
        "first top offer (score; reasons)",
    )
    for d in report["devices"]:
        devices.add_row(
            d["device_id"],
            f"{d['signals_accepted']}/{d['signals_stored'] + d.get('signals_in_aggregates', 0)}"
            + (" (aggregates)" if d.get("uplink_mode") == "aggregate" else ""),
            f"{d['offers_verified']}/{d['offers_rejected']}",
            str(d["decisions"]),
            str(d["clicks"]),
            d["top_offer"] or "-",
        )
    console.print(devices)


def cmd_demo(args: argparse.Namespace) -> int:
    options = DemoOptions(
        broker=args.broker,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        seed=args.seed,
    )
    report = asyncio.run(run_demo(options))
    _print_report(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not succeeded(report):
        sys.stderr.write("demo: something was lost or refused wrongly; see the report\n")
        return 1
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    faults = tuple(f for f in (args.faults or "").split(",") if f)
    try:
        options = fleet.FleetOptions(
            households=args.households,
            broker=args.broker,
            data_dir=Path(args.data_dir) if args.data_dir else None,
            seed=args.seed,
            rounds=args.rounds,
            signals_per_round=args.signals_per_round,
            duration_s=args.duration,
            faults=faults,
            crash_devices=args.crash_devices,
        )
    except ValueError as exc:
        sys.stderr.write(f"fleet: {exc}\n")
        return 2
    report = asyncio.run(fleet.run_fleet(options))
    console = Console(stderr=False, width=110)
    ok = fleet.succeeded(report)
    verdict = "[green]OK[/green]" if ok else "[red]FAILED[/red]"
    console.print(
        f"\n[bold]Edgemart fleet[/bold] ({report['devices']} devices in {report['households']}"
        f" households, {report['broker']}, {report['duration_s']} s): {verdict}"
    )
    totals = Table(show_header=False, box=None)
    for key, value in report.items():
        if key not in ("faults", "lost_ids_sample", "households", "broker", "duration_s"):
            totals.add_row(key, str(value))
    console.print(totals)
    for event in report["faults"]:
        console.print(f"  {event['at_s']:7.2f} s  {event['fault']}: {event['event']}")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not ok:
        sys.stderr.write("fleet: signals were lost or duplicated, or a device did not drain\n")
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="broker + gateway + a simulated household, then a report")
    demo.add_argument("--broker", help="mqtt://HOST:PORT (default: an embedded amqtt broker)")
    demo.add_argument("--report", help="also write the report as JSON to this file")
    demo.add_argument("--data-dir", help="keep state here instead of a temporary folder")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("-v", "--verbose", action="count", default=0)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "fleet",
        help="QA: simulated households against one gateway, with faults, then the loss report",
        description=fleet.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--households", type=int, default=3, help="4 devices each (default: 3)")
    run.add_argument(
        "--faults",
        default="",
        help=f"comma-separated, injected in the middle third: {', '.join(fleet.FAULTS)}",
    )
    run.add_argument(
        "--crash-devices",
        type=int,
        default=2,
        help="with agent-kill: TVs run as their own processes, to be killed (default: 2)",
    )
    run.add_argument(
        "--broker",
        help="mqtt://HOST:PORT, or 'mosquitto' for a private Mosquitto this run starts"
        " (default: an embedded amqtt broker)",
    )
    run.add_argument("--report", help="also write the report as JSON to this file")
    run.add_argument("--data-dir", help="keep state here instead of a temporary folder")
    run.add_argument("--seed", type=int, default=11)
    run.add_argument("--rounds", type=int, default=9, help="usage rounds (default: 9)")
    run.add_argument(
        "--signals-per-round", type=int, default=20, help="per device and round (default: 20)"
    )
    run.add_argument(
        "--duration", type=float, default=12.0, help="seconds the rounds span (default: 12)"
    )
    run.add_argument("-v", "--verbose", action="count", default=0)
    run.set_defaults(func=cmd_fleet)
