"""The fleet report as one HTML page with its charts embedded (SVG, matplotlib on Agg): what
was accepted against what the gateway stored over time with the faults marked, resends,
reconnects and devices up, the ack, launch → offer and decision latency distributions, the
loss accounting and the cost per device. It is built from the JSON report alone (with its
`timeline`), so a recorded run renders again: `python -m simulators.report_html
report.json out.html`."""

from __future__ import annotations

import html
import io
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

matplotlib.rcParams["svg.hashsalt"] = "edgemart-fleet"  # the same report, the same bytes

LOSS_ROWS = (
    ("signals_accepted", "accepted by the devices"),
    ("signals_stored", "stored by the gateway"),
    ("signals_in_aggregates", "folded into aggregates (phones, speakers)"),
    ("signals_dropped_on_purpose", "dropped on purpose (evicted, expired, withdrawn)"),
    ("signals_undelivered", "undelivered (still on a device)"),
    ("signals_lost", "lost"),
    ("signals_duplicated", "stored twice"),
    ("signals_unexpected", "stored but never accepted"),
)
LATENCIES = (
    ("ack_latency_ms", "ack latency (each device's smoothed, ms)"),
    ("launch_to_offer_ms", "launch → offer on the device (ms)"),
    ("decision_ms", "decision with the new offers (ms)"),
)


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = out.getvalue()
    return text[text.index("<svg") :]


def _series(samples: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(times, values) of the samples that have `key` (a gateway that was down has none)."""
    pts = [(s["t_s"], s[key]) for s in samples if key in s]
    return [t for t, _ in pts], [v for _, v in pts]


def _mark_faults(ax: Axes, report: dict[str, Any], end_s: float) -> None:
    begun: dict[str, float] = {}
    for event in report.get("faults", []):
        if event["event"] == "begins":
            begun[event["fault"]] = event["at_s"]
        elif event["fault"] in begun:
            start = begun.pop(event["fault"])
            ax.axvspan(start, event["at_s"], color="tab:red", alpha=0.12)
            ax.annotate(
                event["fault"],
                (start, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="top",
                ha="right",
                color="tab:red",
            )
    for fault, start in begun.items():  # never ended
        ax.axvspan(start, end_s, color="tab:red", alpha=0.12, label=f"{fault} (no end)")
    for launch in report.get("campaigns", []):
        if "at_s" in launch:
            ax.axvline(launch["at_s"], color="tab:green", linestyle="--", linewidth=1)


def _timeline_charts(report: dict[str, Any]) -> str:
    samples = (report.get("timeline") or {}).get("samples", [])
    if not samples:
        return "<p>No timeline was recorded.</p>"
    end_s = samples[-1]["t_s"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for key, label in (
        ("signals_accepted", "accepted (devices)"),
        ("signals_stored", "stored raw (gateway; phones and speakers send aggregates)"),
    ):
        t, v = _series(samples, key)
        top.plot(t, v, label=label, drawstyle="steps-post")
    top.set_ylabel("signals (cumulative)")
    top.legend(loc="upper left", fontsize=8)
    _mark_faults(top, report, end_s)
    for key, label in (
        ("batches_resent", "resends"),
        ("reconnects", "reconnects"),
        ("batches_duplicate", "duplicates at the gateway"),
    ):
        t, v = _series(samples, key)
        bottom.plot(t, v, label=label, drawstyle="steps-post")
    up_ax = bottom.twinx()
    t, v = _series(samples, "devices_up")
    up_ax.plot(t, v, color="grey", linestyle=":", label="devices up")
    t, v = _series(samples, "broker_clients")
    if t:  # the broker's $SYS count (Mosquitto: every 10 s), the gateway's link included
        up_ax.plot(t, v, color="black", linestyle="-.", linewidth=0.8, label="broker clients")
    up_ax.legend(loc="lower right", fontsize=8)
    up_ax.set_ylabel("devices up", color="grey")
    bottom.set_ylabel("count (cumulative)")
    bottom.set_xlabel("seconds since the run began (red: faults; green dashes: launches)")
    bottom.legend(loc="upper left", fontsize=8)
    _mark_faults(bottom, report, end_s)
    return _svg(fig)


def _latency_charts(report: dict[str, Any]) -> str:
    shown = [(k, t) for k, t in LATENCIES if (report.get(k) or {}).get("values")]
    if not shown:
        return "<p>No latencies were measured (no acks, no campaigns).</p>"
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 2.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], shown, strict=True):
        ax.hist(report[key]["values"], bins=30, color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("devices")
    return _svg(fig)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if k != "values")
    return str(value)


def render(report: dict[str, Any]) -> str:
    """The whole page for `report` (the fleet's JSON report with its `timeline`)."""
    lost = report.get("signals_lost", 0) or report.get("signals_duplicated", 0)
    verdict = "OK" if not lost and report.get("drained") else "FAILED"
    pace = report.get("pace", "stress")
    if pace == "world":
        pace += f" (compressed {report.get('compress')}x: {report.get('simulated_days')} days)"
    head = [
        ("verdict", verdict),
        ("devices", report.get("devices")),
        ("households", report.get("households")),
        ("broker", report.get("broker")),
        ("pace", pace),
        ("duration s (start-up s)", f"{report.get('duration_s')} ({report.get('start_s')})"),
        (
            "faults",
            ", ".join(
                f"{e['fault']} {e['event']} at {e['at_s']} s" for e in report.get("faults", [])
            )
            or "none",
        ),
    ]
    loss = [(label, report.get(key, 0)) for key, label in LOSS_ROWS]
    latency = [(title, _summary(report.get(key) or {"n": 0})) for key, title in LATENCIES]
    if "launch_to_offer_pending" in report:
        latency.append(
            ("devices without the offers after a launch", report["launch_to_offer_pending"])
        )
    cost = list((report.get("cost") or {}).items())
    undelivered = [
        (d["device"], f"{d['signals']}: {d['why']}") for d in report.get("undelivered_devices", [])
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Edgemart fleet report</title>
<style>
body {{ font-family: sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.2rem 0.8rem; text-align: left; }}
th {{ font-weight: normal; color: #555; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>Edgemart fleet: {html.escape(verdict)}</h1>
{_table(head)}
<h2>Loss accounting</h2>
<p>{html.escape(str(report.get("accounting", "")))}</p>
{_table(loss)}
{_table(undelivered) if undelivered else ""}
<h2>Over time</h2>
{_timeline_charts(report)}
<h2>Latencies</h2>
{_table(latency)}
{_latency_charts(report)}
<h2>Cost per device</h2>
<p>Agent CPU per device-hour of wall time; gateway CPU-µs and database bytes per device-day
of simulated time. With the gateway in the fleet's process both CPU figures are the whole
process's (an upper bound of each).</p>
{_table(cost) if cost else "<p>Not measured.</p>"}
</body></html>
"""


def write_html(report: dict[str, Any], path: Path) -> None:
    path.write_text(render(report), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m simulators.report_html REPORT.json OUT.html\n")
        return 2
    report = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    write_html(report, Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
