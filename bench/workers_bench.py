"""`gateway_ingest_workers_2_vs_1`: one stream of uplink batches through two gateway worker
processes (`--shared-group`, one PostgreSQL) vs one, signals stored per second from the first
publish until every signal is committed (the workers' `signals_stored` summed). Same private
PostgreSQL (fsync on), same Mosquitto, same stream, a fresh database per run; best of
`ROUNDS`, alternated.

On this 2-core machine the broker, the database, the publisher and the workers share the two
cores: the ratio says how much a second worker adds when nothing else can grow (see
docs/scale.md, "Workers", for how it extrapolates)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg

from bench.ingest_bench import publish_stream
from bench.record import Record
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import Batch, Signal
from protocol.ids import new_id, utcnow
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port
from simulators.postgres import PostgresProcess

DEVICES, BATCHES, SIGNALS = 1000, 10, 20  # 200,000 signals in 10,000 messages
ROUNDS = int(os.environ.get("EDGEMART_BENCH_WORKERS_ROUNDS", "2"))
TOPICS = Topics("edgemart/v1")


def _stream() -> list[tuple[str, bytes]]:
    now = utcnow()
    out = []
    for seq in range(1, BATCHES + 1):
        for d in range(DEVICES):
            device = f"wb-{d:04d}"
            signals = [
                Signal(id=new_id(), kind="content_view", at=now, attrs={"seconds": i})
                for i in range(SIGNALS)
            ]
            batch = Batch(
                device_id=device, seq=seq, sent_at=now, agent_version="0.1.0", signals=signals
            )
            out.append((TOPICS.batch(device), codec.encode(batch, compress=None)))
    return out


def _wait_ready(port: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stored(port: int, token: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/stats", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return int(json.loads(resp.read()).get("signals_stored", 0))


def _fresh(admin: str) -> str:
    name = f"wb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin.rsplit("/", 1)[0] + "/" + name


def _run(
    workers: int, broker: MosquittoProcess, admin: str, stream: list[tuple[str, bytes]], tmp: Path
) -> float:
    """Signals/s of `workers` worker processes over the whole stream."""
    url = _fresh(admin)
    run = tmp / uuid.uuid4().hex[:8]
    run.mkdir(parents=True)
    procs, ports = [], []
    try:
        for n in range(workers):
            data = run / f"gw{n}"
            if n:
                shutil.copytree(run / "gw0" / "keys", data / "keys")
            ports.append(free_port())
            with (run / f"worker{n}.log").open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "edgemart", "gateway", "run"),
                            *("--broker", broker.url, "--data-dir", str(data)),
                            *("--http-port", str(ports[-1]), "--db", url),
                            *("--shared-group", "bench"),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            _wait_ready(ports[-1])
        token = create_token(run / "gw0", db=url)
        want = DEVICES * BATCHES * SIGNALS
        start = publish_stream(broker.port, stream)
        while True:
            stored = sum(_stored(p, token) for p in ports)
            if stored >= want:
                return want / (time.monotonic() - start)
            if time.monotonic() - start > 300:
                raise RuntimeError(f"{workers} workers stored {stored} of {want} in 300 s")
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def run() -> list[Record]:
    stream = _stream()
    one: list[float] = []
    two: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pg = PostgresProcess(tmp / "pg", fast=False)
        broker = MosquittoProcess(str(tmp / "mosquitto"))
        pg.start()
        broker.start()
        try:
            for _ in range(ROUNDS):
                one.append(_run(1, broker, pg.url, stream, tmp))
                two.append(_run(2, broker, pg.url, stream, tmp))
        finally:
            broker.stop()
            pg.remove()
    return [
        Record(
            "gateway_ingest_workers_2_vs_1",
            max(two),
            "signals/s",
            "one worker, same stream, backend and broker",
            max(one),
            f"{DEVICES} devices x {BATCHES} batches x {SIGNALS} signals at QoS 1 through"
            f" Mosquitto ($share, MQTT 5 clean start) into one private PostgreSQL (fsync on),"
            f" fresh database per run, best of {ROUNDS} alternated; 2 cores shared by broker,"
            f" database, publisher and workers (runs: 1 worker {[round(v) for v in one]},"
            f" 2 workers {[round(v) for v in two]})",
        )
    ]
