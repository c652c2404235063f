"""`gateway_cpu_us_per_device_day` and `gateway_db_bytes_per_device_day`, per firmware profile:
what one device costs the cloud side in a day at its profile's default cadence, measured on a
real gateway worker process on a private PostgreSQL (fsync on) behind a private Mosquitto.

A device-day is built from the seeded world (`simulators.world`): each device sends its
household's daily signal rate (`daily_signal_rate`: ~9 usage signals on a TV, plus consumable
levels and the member tier where it reports them), at random times over 24 h, shaped the way
its profile's uplink would send them: raw profiles (hub, tv) cut a batch of the signals within
`batch_max_age_s` of each other; aggregate profiles (phone, speaker) send the cumulative
snapshot of each changed (window, key) row at most every `batch_max_age_s`
(`agent.intake.aggregates`, the agent's own keys and windows). Each device also connects once
(a retained birth). Outcomes, claims and pushes are not in it: they follow campaigns, not the
cadence, and have figures of their own (`claims_per_s_pg`, `launch_to_device_p99_ms`).

Measured per profile, on a fresh database: the worker process's CPU (user + system, from
/proc) from the first publish until every batch is stored and its births are in, minus the
worker's idle rate over the same time (heartbeats and leases: a cost per worker, reported
apart), divided by the devices; the growth of the database's tables and indexes; PostgreSQL's
own CPU per device-day beside it. The baseline, measured in the same run, is the CPU of
decoding and validating the same messages in this process (what any consumer of the uplink
must spend): the ratio says what storing, acking and following up adds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import Profile
from agent.intake.aggregates import aggregate_key, window_label
from bench.record import Record
from bench.workers_bench import _fresh, _wait_ready
from cloud_gateway.security.auth import create_token
from firmware_profiles import profile_path
from protocol import codec
from protocol.envelopes import Ack, Batch, State
from protocol.ids import format_time, new_id
from protocol.topics import Topics
from protocol.vocabulary import PROFILES
from simulators.brokers import MosquittoProcess, free_port
from simulators.cost import process_cpu_s
from simulators.postgres import PostgresProcess
from simulators.world import daily_signal_rate, hourly_load, make_world, usage_signals

DEVICES = int(os.environ.get("EDGEMART_BENCH_CAPACITY_DEVICES", "2000"))
WINDOW = 400  # unacked batches at once, across the fleet
RESEND_S = 10.0  # the agent's ack_timeout_s
IDLE_AFTER_S, IDLE_S = 6.0, 10.0  # the worker's idle rate: measured this long, after this
SEED = 12
DAY_S = 86_400
TICK_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class DeviceDays:
    """One profile's device-days as MQTT messages, in the order devices would send them."""

    profile: str
    topics: Topics  # a root of its own: no retained birth of another run reaches its gateway
    births: list[tuple[str, bytes]]
    batches: list[tuple[str, bytes]]
    keys: list[tuple[str, int]]  # (device, seq) of each batch
    signals: int

    @property
    def messages(self) -> list[tuple[str, bytes]]:
        return [*self.births, *self.batches]


def _profile(name: str) -> Profile:
    return Profile.model_validate(tomllib.loads(profile_path(name).read_text(encoding="utf-8")))


def _time(at: float) -> str:
    return format_time(datetime.fromtimestamp(at, UTC))


def _batch(device: str, outbox: str, seq: int, at: float, **parts: Any) -> bytes:
    batch = Batch.model_validate(
        {
            "device_id": device,
            "seq": seq,
            "sent_at": _time(at),
            "agent_version": "0.1.0",
            "model_version": 1,
            "stats": {"outbox_depth": 0},
            "outbox_id": outbox,
            **parts,
        }
    )
    return codec.encode(batch, compress=None)


def device_days(profile: str, devices: int, now: float) -> DeviceDays:
    """`devices` device-days of `profile` ending at `now`, from the seeded world."""
    topics = Topics(f"cap{uuid.uuid4().hex[:8]}/v1")
    cfg = _profile(profile).uplink
    world = make_world(SEED, devices * 3)
    rng = np.random.default_rng(SEED)
    timed: list[tuple[float, tuple[str, int], str, bytes]] = []
    births: list[tuple[str, bytes]] = []
    signals = 0
    index = 0
    while len(births) < devices:
        persona = world.persona(index % len(world.households))
        index += 1
        if profile not in persona.devices:
            continue
        device = f"{persona.device_id(profile)}-{index}"
        outbox = new_id()
        start = now - DAY_S
        birth = State(
            device_id=device,
            status="online",
            at=_time(start),
            profile=profile,
            agent_version="0.1.0",
            model_version=1,
            cohorts=["all", f"profile:{profile}"],
        )
        births.append((topics.state(device), codec.encode(birth)))
        n = int(rng.poisson(daily_signal_rate(persona, profile)))
        made = usage_signals(persona, profile, rng, n)
        times = np.sort(start + rng.uniform(0, DAY_S, n))
        signals += n
        # Cut batches as the uplink does: what arrived within batch_max_age_s of the first.
        groups: list[list[int]] = []
        for i, t in enumerate(times):
            if groups and t - times[groups[-1][0]] <= cfg.batch_max_age_s:
                groups[-1].append(i)
            else:
                groups.append([i])
        counts: dict[tuple[str, str], int] = {}
        for seq, group in enumerate(groups, 1):
            at = float(times[group[-1]])
            if cfg.mode == "raw":
                parts: dict[str, Any] = {
                    "signals": [
                        {
                            "id": new_id(),
                            "kind": made[i]["kind"],
                            "at": _time(float(times[i])),
                            "attrs": made[i]["attrs"],
                        }
                        for i in group
                    ]
                }
            else:
                changed: list[tuple[str, str]] = []
                for i in group:
                    row = (
                        window_label(float(times[i]), cfg.aggregate_window_s),
                        aggregate_key(made[i]["kind"], made[i]["attrs"]),
                    )
                    counts[row] = counts.get(row, 0) + 1
                    if row not in changed:
                        changed.append(row)
                parts = {
                    "aggregates": [
                        {"window": w, "key": k, "count": counts[(w, k)]} for w, k in changed
                    ]
                }
            payload = _batch(device, outbox, seq, at, **parts)
            timed.append((at, (device, seq), topics.batch(device), payload))
    timed.sort(key=lambda item: item[0])
    return DeviceDays(
        profile,
        topics,
        births,
        [(topic, payload) for _, _, topic, payload in timed],
        [key for _, key, _, _ in timed],
        signals,
    )


def publish_acked(port: int, days: DeviceDays) -> int:
    """Publish the births, then the batches as the devices would: each held until its ack,
    at most `WINDOW` unacked at once across the fleet (a day's traffic compressed into
    seconds must not overflow the gateway's bounded queue, which real devices' spread over
    the day never fills), resent after `RESEND_S` without an ack. Returns the resends."""
    acked: set[tuple[str, int]] = set()
    changed = threading.Condition()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        ack = codec.decode(bytes(message.payload), Ack)
        device = message.topic.split("/")[-3]
        with changed:
            acked.update((device, seq) for seq in ack.acks)
            changed.notify()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-cap-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(100)
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(f"{days.topics.root}/dev/+/down/ack", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("no SUBACK for the ack topic")
        for topic, payload in days.births:
            client.publish(topic, payload, qos=1, retain=True)
        outstanding: dict[tuple[str, int], tuple[float, int]] = {}
        resends, sent, deadline = 0, 0, time.monotonic() + 600
        with changed:
            while sent < len(days.batches) or outstanding:
                for key in [k for k in outstanding if k in acked]:
                    del outstanding[key]
                now = time.monotonic()
                while sent < len(days.batches) and len(outstanding) < WINDOW:
                    client.publish(*days.batches[sent], qos=1)
                    outstanding[days.keys[sent]] = (now, sent)
                    sent += 1
                for key, (at, index) in list(outstanding.items()):
                    if now - at > RESEND_S:
                        client.publish(*days.batches[index], qos=1)
                        outstanding[key] = (now, index)
                        resends += 1
                if now > deadline:
                    raise RuntimeError(f"{len(outstanding)} batches unacked after 600 s")
                changed.wait(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    return resends


def _postmaster(pg: PostgresProcess) -> int:
    """The postmaster's pid (under root the server runs as another user, below `runuser`)."""
    return int((pg.data / "postmaster.pid").read_text().split()[0])


def _children_cpu_s(parent: int) -> float:
    """CPU of `parent` and its live children (PostgreSQL's postmaster and backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == parent or int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) / TICK_S
    return total


def _db_bytes(url: str) -> dict[str, int]:
    """Bytes of each table with its indexes and TOAST; partitions counted as their table."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(p.relname, c.relname), pg_total_relation_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
            " LEFT JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm')"
        ).fetchall()
    sizes: dict[str, int] = {}
    for table, size in rows:
        sizes[table] = sizes.get(table, 0) + int(size)
    return sizes


def _stats(port: int, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/stats", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


@dataclass(frozen=True, slots=True)
class Cost:
    cpu_us: float  # gateway worker, per device-day, idle rate taken off
    db_bytes: float  # per device-day
    tables: dict[str, float]  # growth per device-day by table
    db_cpu_us: float  # PostgreSQL's processes, per device-day
    idle_cpu_s_per_hour: float  # the worker with no devices
    resends: int  # batches the publisher sent again for want of an ack
    overflow: int  # messages the gateway's bounded queue turned away
    elapsed_s: float  # from the first publish until all was in


def _measure(days: DeviceDays, broker: MosquittoProcess, pg: PostgresProcess, tmp: Path) -> Cost:
    url = _fresh(pg.url)
    data = tmp / f"gw-{days.profile}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    with (tmp / f"{data.name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "edgemart", "gateway", "run"),
                *("--broker", broker.url, "--data-dir", str(data)),
                *("--http-port", str(port), "--db", url),
                *("--topic-root", days.topics.root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(port)
        token = create_token(data, db=url)
        time.sleep(IDLE_AFTER_S)  # start-up settles: the lease taken, retention's first run
        idle_start, idle_cpu = time.monotonic(), process_cpu_s(proc.pid)
        time.sleep(IDLE_S)
        idle_rate = (process_cpu_s(proc.pid) - idle_cpu) / (time.monotonic() - idle_start)
        bytes_before = _db_bytes(url)
        cpu_before, db_cpu_before = process_cpu_s(proc.pid), _children_cpu_s(_postmaster(pg))
        start = time.monotonic()
        resends = publish_acked(broker.port, days)
        while True:
            stats = _stats(port, token)
            if stats.get("states_received", 0) >= len(days.births):
                break
            if time.monotonic() - start > 600:
                raise RuntimeError(f"{days.profile}: births not all in after 600 s")
            time.sleep(0.2)
        time.sleep(1.0)  # acks and birth follow-ups of the last group
        elapsed = time.monotonic() - start
        cpu = process_cpu_s(proc.pid) - cpu_before - idle_rate * elapsed
        db_cpu = _children_cpu_s(_postmaster(pg)) - db_cpu_before
        after = _db_bytes(url)
        grown = {t: after[t] - bytes_before.get(t, 0) for t in after}
    finally:
        proc.terminate()
        proc.wait(30)
    n = len(days.births)
    tables = {t: b / n for t, b in sorted(grown.items()) if b > 0}
    return Cost(
        cpu * 1e6 / n,
        sum(grown.values()) / n,
        tables,
        db_cpu * 1e6 / n,
        idle_rate * 3600,
        resends,
        int(stats.get("uplink_overflow", 0)),
        elapsed,
    )


def _decode_cpu_us(days: DeviceDays) -> float:
    """CPU-µs per device-day of decoding and validating the same messages in-process."""
    start = time.process_time()
    for _topic, payload in days.births:
        codec.decode(payload, State)
    for _topic, payload in days.batches:
        codec.decode(payload, Batch, allow_zlib=True)
    return (time.process_time() - start) * 1e6 / len(days.births)


def run() -> list[Record]:
    now = time.time()
    records: list[Record] = []
    costs: dict[str, tuple[DeviceDays, Cost, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pg = PostgresProcess(tmp / "pg", fast=False)
        broker = MosquittoProcess(str(tmp / "mosquitto"))
        pg.start()
        broker.start()
        try:
            for profile in PROFILES:
                days = device_days(profile, DEVICES, now)
                costs[profile] = (days, _measure(days, broker, pg, tmp), _decode_cpu_us(days))
        finally:
            broker.stop()
            pg.remove()
    for profile, (days, cost, decode_us) in costs.items():
        note = (
            f"{DEVICES} {profile} device-days from the seeded world ({days.signals / DEVICES:.1f}"
            f" signals, {len(days.batches) / DEVICES:.1f} batches and 1 birth per device-day),"
            f" one gateway worker on a private PostgreSQL (fsync on) behind Mosquitto, QoS 1;"
            f" over {cost.elapsed_s:.0f} s, the worker's idle rate"
            f" ({cost.idle_cpu_s_per_hour:.2f} CPU-s/hour) taken off;"
            f" PostgreSQL's own CPU {cost.db_cpu_us:,.0f} us per device-day; bytes per device-day"
            " by table: "
            + ", ".join(f"{t} {b:,.0f}" for t, b in cost.tables.items())
            + f"; {cost.resends} resends, {cost.overflow} turned away by the gateway's queue"
        )
        records.append(
            Record(
                f"gateway_cpu_us_per_device_day_{profile}",
                cost.cpu_us,
                "us/device-day",
                "decode + validate of the same messages in-process",
                decode_us,
                note,
            )
        )
        records.append(
            Record(
                f"gateway_db_bytes_per_device_day_{profile}",
                cost.db_bytes,
                "bytes/device-day",
                "the same device-day's uplink payload bytes",
                sum(len(p) for _t, p in days.messages) / DEVICES,
                note,
            )
        )
    load = hourly_load(make_world(SEED, 100_000), np.random.default_rng(SEED))
    heaviest = max(costs, key=lambda p: costs[p][1].cpu_us)
    days, cost, decode_us = costs[heaviest]
    records.append(
        Record(
            "gateway_cpu_us_per_device_day",
            cost.cpu_us,
            "us/device-day",
            "decode + validate of the same messages in-process",
            decode_us,
            f"the heaviest profile ({heaviest}); per profile: "
            + ", ".join(f"{p} {c.cpu_us:,.0f}" for p, (_d, c, _u) in costs.items())
            + " us per device-day; the seeded world's busiest hour carries"
            f" {load.max():.2f}x the day's mean load (local hour {int(load.argmax())})",
        )
    )
    return records
