"""`gateway_ingest_signals_per_s`: one `edgemart gateway run` process behind Mosquitto,
from the first publish until every signal is committed, vs a bare paho subscriber that
only receives the same stream (bench/paho_sink.py). Also the fleet shapes: raw signals, and
aggregate snapshots (the default mode of every profile)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.record import Record
from protocol import codec
from protocol.envelopes import Aggregate, Batch, Signal
from protocol.ids import new_id, utcnow
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port

DEVICES, BATCHES, SIGNALS = 20, 25, 200  # 100,000 signals in 500 zlib batches
FLEET = (1000, 10, 10)
"""The fleet-shaped stream: 1,000 devices each sending 10 batches of 10 signals (100,000
signals in 10,000 messages), as raw-mode TVs and hubs do when they cut a batch every 2 s;
the dense stream above is a drain after an outage, 200 signals a batch."""
AGGREGATE_FLEET = (1000, 10, 10)
"""1,000 devices each sending 10 batches of 10 aggregate snapshots: aggregate mode, the
default, where each batch carries the cumulative counts of the open hour's changed keys (the
same keys again and again: each snapshot replaces the one before)."""
TOPICS = Topics("edgemart/v1")


def _batches(
    prefix: str, devices: int, batches: int, content: Callable[[int, datetime], dict[str, Any]]
) -> list[tuple[str, bytes]]:
    """Every device's batches 1..`batches`, seq by seq; `content(seq, now)` fills each one."""
    now = utcnow()
    out: list[tuple[str, bytes]] = []
    for seq in range(1, batches + 1):
        for d in range(devices):
            device = f"{prefix}-{d:04d}"
            batch = Batch(
                device_id=device, seq=seq, sent_at=now, agent_version="0.1.0", **content(seq, now)
            )
            out.append((TOPICS.batch(device), codec.encode(batch, compress=None)))
    return out


def _stream(
    devices: int = DEVICES, batches: int = BATCHES, signals: int = SIGNALS
) -> list[tuple[str, bytes]]:
    def content(seq: int, now: datetime) -> dict[str, Any]:
        attrs = ({"category": "tv_streaming", "seconds": i} for i in range(signals))
        return {
            "signals": [Signal(id=new_id(), kind="content_view", at=now, attrs=a) for a in attrs]
        }

    return _batches("tv-ingest", devices, batches, content)


def _aggregate_stream(devices: int, batches: int, keys: int) -> list[tuple[str, bytes]]:
    def content(seq: int, now: datetime) -> dict[str, Any]:
        window = "1h:" + now.strftime("%Y-%m-%dT%H")
        return {
            "aggregates": [
                Aggregate(
                    window=window,
                    key=f"content_view/category=c{k}",
                    count=3 * seq + k,
                    seconds=60.0 * seq,
                )
                for k in range(keys)
            ]
        }

    return _batches("hub-ingest", devices, batches, content)


def publish_stream(port: int, stream: list[tuple[str, bytes]]) -> float:
    """Publish at QoS 1 as fast as the broker takes it; returns the start time (the ingest
    and the workers benchmarks feed their gateways with it)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.monotonic()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in stream]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()
    return start


def _baseline(
    broker: MosquittoProcess, stream: list[tuple[str, bytes]], want: int, mode: str = ""
) -> float:
    """Signals/s of a `bench.paho_sink` subscriber ("": bare, "--read", "--validate",
    "--msgspec")."""
    sink = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.paho_sink",
            str(broker.port),
            "edgemart/v1/dev/+/up/batch",
            str(len(stream)),
            *([mode] if mode else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == "ready"
    start = publish_stream(broker.port, stream)
    end = float(sink.stdout.readline())
    sink.wait(30)
    return want / (end - start)


def _gateway(
    broker: MosquittoProcess,
    stream: list[tuple[str, bytes]],
    want: int,
    tmp: Path,
    counter: str = "signals_stored",
) -> float:
    """Items/s from the first publish until the gateway's `counter` (`GET /v1/stats`) says
    `want` are committed."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data = tmp / "gw"
    log = (tmp / "gateway.log").open("wb")
    gw = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgemart",
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--data-dir",
            str(data),
            "--http-port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        token = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgemart",
                "gateway",
                "token",
                "create",
                "--data-dir",
                str(data),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        time.sleep(1.0)  # the MQTT subscription is up (healthz answers before it)
        start = publish_stream(broker.port, stream)
        request = urllib.request.Request(
            f"{base}/v1/stats", headers={"Authorization": f"Bearer {token}"}
        )
        while True:
            with urllib.request.urlopen(request, timeout=5) as resp:
                stored = json.loads(resp.read())[counter]
            if stored >= want:
                return want / (time.monotonic() - start)
            if time.monotonic() - start > 300:
                raise RuntimeError(f"gateway stored {stored} of {want} in 300 s")
            time.sleep(0.02)
    finally:
        gw.terminate()
        gw.wait(30)
        log.close()


def _has_msgspec() -> bool:
    return importlib.util.find_spec("msgspec") is not None


def run() -> list[Record]:
    dense, fleet = _stream(), _stream(*FLEET)
    dense_n, fleet_n = DEVICES * BATCHES * SIGNALS, FLEET[0] * FLEET[1] * FLEET[2]
    aggregated = _aggregate_stream(*AGGREGATE_FLEET)
    aggregated_n = AGGREGATE_FLEET[0] * AGGREGATE_FLEET[1] * AGGREGATE_FLEET[2]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # One broker per stream: a stopped gateway's persistent session would keep queueing.
        broker = MosquittoProcess(str(tmp / "mosquitto-dense"))
        broker.start()
        try:
            base = _baseline(broker, dense, dense_n)
            reading = _baseline(broker, dense, dense_n, "--read")
            validating = _baseline(broker, dense, dense_n, "--validate")
            fast_validating = (
                _baseline(broker, dense, dense_n, "--msgspec") if _has_msgspec() else None
            )
            value = _gateway(broker, dense, dense_n, tmp / "dense")
        finally:
            broker.stop()
        broker = MosquittoProcess(str(tmp / "mosquitto-fleet"))
        broker.start()
        try:
            fleet_base = _baseline(broker, fleet, fleet_n)
            fleet_value = _gateway(broker, fleet, fleet_n, tmp / "fleet")
        finally:
            broker.stop()
        broker = MosquittoProcess(str(tmp / "mosquitto-aggregates"))
        broker.start()
        try:
            aggregated_base = _baseline(broker, aggregated, aggregated_n)
            aggregated_value = _gateway(
                broker, aggregated, aggregated_n, tmp / "aggregates", "aggregates_stored"
            )
        finally:
            broker.stop()
    shape = f"{DEVICES} devices x {BATCHES} batches x {SIGNALS} signals at QoS 1 through Mosquitto"
    records = [
        Record(
            "gateway_ingest_signals_per_s",
            value,
            "signals/s",
            "bare paho subscriber",
            base,
            f"{shape}; gateway: validated, committed (synchronous=FULL), acked",
        ),
        Record(
            "gateway_ingest_vs_validating_subscriber",
            value,
            "signals/s",
            "paho subscriber that decodes and validates each batch, stores nothing",
            validating,
            "the same stream and gateway run as gateway_ingest_signals_per_s; the baseline does"
            " the work any gateway must do before storing (bounded inflate, JSON, pydantic"
            " Batch), so the ratio is what storing once, acking and the asyncio layer cost",
        ),
        Record(
            "gateway_ingest_read_only_subscriber",
            reading,
            "signals/s",
            "bare paho subscriber",
            base,
            f"{shape}; a paho subscriber that only inflates and parses each batch's JSON (the"
            " standard library's json; no validation, no store)",
        ),
        Record(
            "gateway_ingest_validate_only_subscriber",
            validating,
            "signals/s",
            "bare paho subscriber",
            base,
            f"{shape}; a paho subscriber that only checks each batch the way the gateway must"
            " before storing it (bounded inflate, JSON, the contract's pydantic Batch) and stores"
            " nothing: the ceiling of gateway_ingest_signals_per_s's ratio for any gateway that"
            " validates with the contract's models",
        ),
    ]
    if fast_validating is not None:
        records.append(
            Record(
                "gateway_ingest_msgspec_subscriber",
                fast_validating,
                "signals/s",
                "bare paho subscriber",
                base,
                f"{shape}; like gateway_ingest_validate_only_subscriber, with msgspec (C, one pass"
                " from bytes to typed objects) in place of json and pydantic, the contract's bounds"
                " mirrored in bench/msgspec_batch.py (and checked against them): how far a"
                " validating consumer in Python gets with the fastest validating decoder we know",
            )
        )
    else:
        sys.stderr.write("bench: gateway_ingest_msgspec_subscriber needs msgspec (.[dev])\n")
    records += [
        Record(
            "gateway_ingest_fleet_signals_per_s",
            fleet_value,
            "signals/s",
            "bare paho subscriber",
            fleet_base,
            f"{FLEET[0]} devices x {FLEET[1]} batches x {FLEET[2]} signals (10,000 messages) at"
            " QoS 1 through Mosquitto, the shape of raw-mode devices cutting a batch every 2 s;"
            " gateway: validated, committed (synchronous=FULL), acked",
        ),
        Record(
            "gateway_ingest_fleet_aggregates_per_s",
            aggregated_value,
            "snapshots/s",
            "bare paho subscriber",
            aggregated_base,
            f"{AGGREGATE_FLEET[0]} devices x {AGGREGATE_FLEET[1]} batches x {AGGREGATE_FLEET[2]}"
            " aggregate snapshots (10,000 messages) at QoS 1 through Mosquitto: aggregate mode,"
            " the default; gateway: validated, each snapshot upserted (the latest wins),"
            " committed (synchronous=FULL), acked",
        ),
    ]
    return records
