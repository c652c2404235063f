"""`edgemart demo` and `edgemart fleet`: run a QA loop on one machine and print (and write)
its report. The runs themselves (and rich, aiohttp, the gateway) are imported when a verb
runs, so that `edgemart --help` stays light."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from simulators import fdlimit
from simulators.options import (
    FAULTS,
    FLEET_GUIDE,
    PACES,
    DemoOptions,
)

DEMO_TOTALS = (
    "signals_accepted",
    "signals_stored",
    "signals_in_aggregates",
    "signals_lost",
    "signals_duplicated",
    "offers_pushed",
    "offers_verified",
    "offers_rejected",
    "bundles_rejected",
    "forged_bundles_sent",
    "forged_offers_sent",
    "tampered_bundles_sent",
    "tampered_offers_sent",
    "decisions",
    "decision_p50_ms",
    "decision_p99_ms",
    "outcomes_recorded",
    "outcomes_stored",
    "topic_root",
)


def broker_problem(url: str) -> str | None:
    """Why `--broker URL` cannot be used (bad URL, nothing listening), or None: checked
    before the run starts anything, so a wrong address costs one line and nothing else."""
    from daemonkit.ports import unreachable  # noqa: PLC0415
    from protocol.broker_url import parse_broker_url  # noqa: PLC0415

    try:
        parsed = parse_broker_url(url)
    except ValueError as exc:
        return str(exc)
    return unreachable(parsed.host, parsed.port)


def shared_gateway_problem(options: Any) -> str | None:
    """Why `--gateway` (with its token and trust files) cannot be used, or None."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    from daemonkit.ports import unreachable  # noqa: PLC0415

    url = urlsplit(str(options.gateway))
    if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
        return f"--gateway {options.gateway}: give it as http://HOST:PORT"
    for flag, path in (
        ("--gateway-token-file", options.gateway_token_file),
        ("--trust", options.trust),
    ):
        if not Path(path).is_file():
            return f"{flag} {path}: no such file"
    if why := unreachable(url.hostname, url.port):
        return f"--gateway {options.gateway}: {why}"
    return None


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from simulators.demo import succeeded  # noqa: PLC0415

    console = Console(stderr=False, width=110)
    verdict = "[green]OK[/green]" if succeeded(report) else "[red]FAILED[/red]"
    console.print(
        f"\n[bold]Edgemart demo[/bold] ({report['broker']}, {report['duration_s']} s): {verdict}"
    )
    totals = Table(show_header=False, box=None)
    for key in DEMO_TOTALS:
        totals.add_row(key, str(report[key]))
    console.print(totals)
    devices = Table(
        "device",
        "signals in/stored/in aggregates",
        "offers ok/refused",
        "decisions",
        "clicks",
        "first top offer (score; reasons)",
    )
    for d in report["devices"]:
        devices.add_row(
            d["device_id"],
            f"{d['signals_accepted']}/{d['signals_stored']}/{d.get('signals_in_aggregates', 0)}",
            f"{d['offers_verified']}/{d['offers_rejected']}",
            str(d["decisions"]),
            str(d["clicks"]),
            d["top_offer"] or "-",
        )
    console.print(devices)
    from simulators.demo_social import social_lines  # noqa: PLC0415

    for line in social_lines(report):
        console.print(line, soft_wrap=True, highlight=False)
    lan = report.get("household_lan")
    if lan:
        needs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(lan["tv_consumable_need"].items()))
        console.print(
            f"household LAN: coordinator {lan['coordinator']}, {lan['active_devices']} devices"
            f" active, appliances {', '.join(lan['appliances']) or '-'};"
            f" the TV sees consumable need: {needs or '-'}"
        )
        story = lan.get("purifier_to_tv")
        if story:
            console.print(f"purifier -> TV: {story['line']}")
        thin = [d for d in report["devices"] if d.get("ranking") == "thin"]
        for d in thin:
            by_priority = d.get("remote_rank_offline", 0) + d.get("remote_rank_failed", 0)
            console.print(
                f"thin {d['device_id']}: of {d['decisions']} decisions,"
                f" {d.get('remote_ranked', 0)} ranked by the coordinator, {by_priority} by"
                " priority (coordinator away), the rest held by the household's caps"
            )


def cmd_demo(args: argparse.Namespace) -> int:
    if args.broker and (why := broker_problem(args.broker)):
        sys.stderr.write(f"edgemart demo: --broker {args.broker}: {why}\n")
        return 2
    from simulators.demo import refusals_match, run_demo, succeeded  # noqa: PLC0415
    from simulators.demo_social import social_ok  # noqa: PLC0415

    options = DemoOptions(
        broker=args.broker,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        seed=args.seed,
        topic_root=args.topic_root,
        lan=args.lan,
    )
    try:
        report = asyncio.run(run_demo(options))
    except asyncio.CancelledError:  # SIGTERM (SIGINT ends as KeyboardInterrupt: exit 130)
        sys.stderr.write("edgemart demo: stopped; what it left retained is cleared\n")
        return 143
    _print_report(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not succeeded(report):
        why = "something was lost or refused wrongly"
        if not refusals_match(report):
            why = "the refusals are not exactly the forged and tampered bundles sent"
        elif not social_ok(report):
            why = "the group did not form or the wave did not sell out"
        sys.stderr.write(f"demo: {why}; see the report\n")
        return 1
    return 0


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit():
        raise ValueError(f"--shard takes K/N (e.g. 1/2), not {text!r}")
    return int(k), int(n)


def cmd_fleet_merge(paths: list[str]) -> int:
    """`edgemart fleet merge REPORT...`: the shards' reports summed into one, printed as
    JSON; exit 1 when the merged run did not succeed."""
    from simulators.fleet import succeeded  # noqa: PLC0415
    from simulators.fleet_merge import load_reports, merge  # noqa: PLC0415

    if not paths:
        sys.stderr.write("edgemart fleet merge: give the shards' report files\n")
        return 2
    try:
        merged = merge(load_reports([Path(p) for p in paths]))
    except ValueError as exc:
        sys.stderr.write(f"edgemart fleet merge: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(merged, indent=2) + "\n")
    return 0 if succeeded(merged) else 1


def _no_train_extra(exc: ModuleNotFoundError) -> int:
    from models.cli import missing_train_extra  # noqa: PLC0415

    sys.stderr.write(f"edgemart fleet lift: {missing_train_extra(exc)}\n")
    return 1


def cmd_fleet_lift(args: argparse.Namespace) -> int:
    """`edgemart fleet lift`: the three rankings on one seeded world (`simulators.lift`), the
    result table printed as Markdown (and JSON with --report)."""
    from simulators.options import LiftOptions  # noqa: PLC0415

    try:
        from simulators.lift import LiftError, run_lift  # noqa: PLC0415 - numpy, onnxruntime
    except ModuleNotFoundError as exc:  # the retrained arm trains with the `train` extra
        return _no_train_extra(exc)

    try:
        options = LiftOptions(
            seed=7 if args.seed is None else args.seed,
            households=300 if args.households is None else args.households,
            days=args.days,
            sessions_per_day=args.sessions_per_day,
            min_score=0.3 if args.min_score is None else args.min_score,
            holdout=args.holdout_share,
            work_dir=Path(args.data_dir) if args.data_dir else None,
        )
        result = run_lift(options)
    except ModuleNotFoundError as exc:
        return _no_train_extra(exc)
    except (ValueError, LiftError, OSError) as exc:
        sys.stderr.write(f"edgemart fleet lift: {exc}\n")
        return 2
    body = result.to_json()
    if args.report:
        Path(args.report).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    rate, shown = body["rate_ratio"], body["shown_ratio"]
    verdict = "met" if body["goal_met"] else "NOT met"
    sys.stdout.write(
        result.markdown()
        + f"\nbest model arm: {body['best']}: {rate:.2f}x the conversions per 1,000 impressions"
        f" of broadcast, {shown:.2f} of its offers shown; goal (>= 2x, <= 0.5) {verdict}\n"
    )
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    if args.verb:
        if args.verb[0] == "lift":
            if len(args.verb) > 1:
                sys.stderr.write(f"edgemart fleet lift: takes options only, not {args.verb[1:]}\n")
                return 2
            return cmd_fleet_lift(args)
        if args.verb[0] != "merge":
            sys.stderr.write(
                f"edgemart fleet: unknown verb {args.verb[0]!r} (known: merge, lift)\n"
            )
            return 2
        return cmd_fleet_merge(args.verb[1:])
    from simulators import scenario  # noqa: PLC0415 - pydantic, only for this verb

    faults = None if args.faults is None else tuple(f for f in args.faults.split(",") if f)
    try:
        ramp = None if args.ramp is None else float(args.ramp.removesuffix("/s"))
        options = scenario.options(
            Path(args.scenario) if args.scenario else None,
            households=args.households,
            devices=args.devices,
            ramp=ramp,
            broker=args.broker,
            data_dir=Path(args.data_dir) if args.data_dir else None,
            seed=args.seed,
            rounds=args.rounds,
            signals_per_round=args.signals_per_round,
            duration_s=args.duration,
            faults=faults,
            crash_devices=args.crash_devices,
            topic_root=args.topic_root,
            drain_timeout=args.drain_timeout,
            procs=args.procs,
            shard=_shard(args.shard),
            gateway=args.gateway,
            gateway_token_file=Path(args.gateway_token_file) if args.gateway_token_file else None,
            trust=Path(args.trust) if args.trust else None,
            pace=args.pace,
            compress=args.compress,
            progress=args.progress or sys.stdout.isatty() or None,
            lan=args.lan or None,
        )
    except ValueError as exc:  # scenario.ScenarioError names the file and the field
        sys.stderr.write(f"edgemart fleet: {exc}\n")
        return 2
    if options.gateway is not None and (why := shared_gateway_problem(options)):
        sys.stderr.write(f"edgemart fleet: {why}\n")
        return 2
    if args.broker not in (None, "mosquitto") and (why := broker_problem(args.broker)):
        sys.stderr.write(f"edgemart fleet: --broker {args.broker}: {why}\n")
        return 2
    crash = options.crash_devices if "agent-kill" in options.faults else 0
    if refusal := fdlimit.ensure_fleet(options, crash if options.runs_crash_devices else 0):
        sys.stderr.write(f"edgemart fleet: {refusal}\n")
        return 2
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from simulators import fleet  # noqa: PLC0415

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
        if key not in SHOWN_APART:
            totals.add_row(key, _brief(value))
    console.print(totals)
    for event in report["faults"]:
        console.print(f"  {event['at_s']:7.2f} s  {event['fault']}: {event['event']}")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.html:
        from simulators.report_html import write_html  # noqa: PLC0415 - matplotlib

        write_html(report, Path(args.html))
    if not ok:
        sys.stderr.write(
            "fleet: signals were lost or duplicated, a device did not drain, or the group"
            " buys formed were not the plan's\n"
        )
        return 1
    return 0


SHOWN_APART = (
    "faults",
    "lost_ids_sample",
    "households",
    "broker",
    "duration_s",
    "timeline",
    "accounting_counts",
)


def _brief(value: Any) -> str:
    """A report value in one line: a latency summary without its values."""
    if isinstance(value, dict) and "values" in value:
        value = {k: v for k, v in value.items() if k != "values"}
    return str(value)


TOPIC_ROOT_HELP = (
    "MQTT topic root of this run (default: a fresh edgemart-qa/... one, so a real gateway and"
    " its devices on the same broker see nothing). What it leaves retained under an"
    " edgemart-qa/ root is cleared at the end; under any other root it is left as it is"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="broker + gateway + a simulated household, then a report")
    demo.add_argument("--broker", help="mqtt://HOST:PORT (default: an embedded amqtt broker)")
    demo.add_argument("--report", help="also write the report as JSON to this file")
    demo.add_argument("--data-dir", help="keep state here instead of a temporary folder")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--topic-root", default=None, help=TOPIC_ROOT_HELP)
    demo.add_argument(
        "--no-lan",
        dest="lan",
        action="store_false",
        help="no household LAN (discovery, coordinator, household caps)",
    )
    demo.add_argument("-v", "--verbose", action="count", default=0)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "fleet",
        help="QA: simulated households against one gateway, with faults, then the loss report",
        description=FLEET_GUIDE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "verb",
        nargs="*",
        metavar="merge REPORT | lift",
        help="`edgemart fleet merge REPORT...`: sum the reports of --shard runs into one;"
        " `edgemart fleet lift`: conversions per 1,000 impressions and offers shown of"
        " popularity broadcast, the shipped model and a model retrained on the fleet's logs,"
        " in one seeded world (--households, default 300; --seed, default 7; --days;"
        " --min-score; --holdout-share; --report; --data-dir keeps the retrained model)",
    )
    run.add_argument("--days", type=int, default=7, help="with lift: simulated days (default: 7)")
    run.add_argument(
        "--sessions-per-day",
        type=float,
        default=6.0,
        help="with lift: moments a day each device could show an offer (default: 6)",
    )
    run.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="with lift: the model arms' decisions.min_score (default: 0.3)",
    )
    run.add_argument(
        "--holdout-share",
        type=float,
        default=0.1,
        help="with lift: every campaign's holdout share (default: 0.1)",
    )
    run.add_argument(
        "--scenario",
        help="a scenario file (TOML; simulators/scenarios/): size, mix, pace, campaigns, timed"
        " faults, seed; the flags below win over it",
    )
    run.add_argument("--households", type=int, default=None, help="4 devices each (default: 3)")
    run.add_argument(
        "--procs",
        type=int,
        default=None,
        help="agent worker processes (default: one per core, more when one process's open"
        " files limit cannot hold its share)",
    )
    run.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="run the K-th of N deterministic slices of the fleet (same --seed and --devices"
        " on every shard); `edgemart fleet merge` combines their reports",
    )
    run.add_argument(
        "--devices",
        type=int,
        default=None,
        help="devices in all, instead of --households (rounded up to whole households of the"
        " mix: 4 unless a scenario says else)",
    )
    run.add_argument(
        "--ramp",
        default=None,
        metavar="N/s",
        help="start (and stop) N devices a second, households concurrently (default: as fast"
        " as 16 households a worker process starting at once allow)",
    )
    run.add_argument(
        "--faults",
        default=None,
        help=f"comma-separated, injected in the middle third: {', '.join(FAULTS)}",
    )
    run.add_argument(
        "--crash-devices",
        type=int,
        default=None,
        help="with agent-kill: TVs run as their own processes, to be killed (default: 2)",
    )
    run.add_argument(
        "--broker",
        help="mqtt://HOST:PORT, or 'mosquitto' for a private Mosquitto this run starts"
        " (default: an embedded amqtt broker)",
    )
    run.add_argument(
        "--gateway",
        default=None,
        metavar="http://HOST:PORT",
        help="use this running gateway (shared by the --shard runs of many machines) instead"
        " of starting one; needs --gateway-token-file, --trust, --broker and --topic-root (the"
        " gateway's); shard 1 launches the campaigns; gateway-restart and broker-restart are"
        " refused",
    )
    run.add_argument(
        "--gateway-token-file",
        default=None,
        metavar="FILE",
        help="with --gateway: a file holding an operator token (`edgemart gateway token create`)",
    )
    run.add_argument(
        "--trust",
        default=None,
        metavar="FILE",
        help="with --gateway: the gateway's trust file (trust.json in its data folder)",
    )
    run.add_argument("--report", help="also write the report as JSON to this file")
    run.add_argument("--data-dir", help="keep state here instead of a temporary folder")
    run.add_argument("--seed", type=int, default=None, help="default: 11")
    run.add_argument("--rounds", type=int, default=None, help="usage rounds (default: 9)")
    run.add_argument(
        "--signals-per-round",
        type=int,
        default=None,
        help="per device and round, at the stress pace (default: 20)",
    )
    run.add_argument(
        "--duration", type=float, default=None, help="seconds the rounds span (default: 12)"
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="seconds every device has to drain at the end; what it still holds then is"
        " reported undelivered (default: 90)",
    )
    run.add_argument(
        "--pace",
        choices=PACES,
        default=None,
        help="stress: --signals-per-round per device and round (default); world: each"
        " device's own daily rate in the synthetic world (~9 a day on a TV), --compress x"
        " faster than real time",
    )
    run.add_argument(
        "--compress",
        type=float,
        default=None,
        help="with --pace world: simulated seconds per real second (default: 1440, a day a minute)",
    )
    run.add_argument(
        "--progress",
        action="store_true",
        help="live progress display (default: when stdout is a terminal)",
    )
    run.add_argument(
        "--lan",
        action="store_true",
        help="each household's devices on the loopback LAN, as the demo: real mDNS discovery,"
        " memberships from the gateway, a coordinator per household (docs/household.md)",
    )
    run.add_argument("--html", help="also write an HTML report with charts to this file")
    run.add_argument("--topic-root", default=None, help=TOPIC_ROOT_HELP)
    run.add_argument("-v", "--verbose", action="count", default=0)
    run.set_defaults(func=cmd_fleet)
