"""The processes a bench runs agents against: a private Mosquitto and an `edgemart gateway
run` on it, started and stopped together (`broker_and_gateway`)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from simulators.brokers import MosquittoProcess, free_port


@contextlib.contextmanager
def broker_and_gateway(
    tmp: Path, timeout: float = 60.0, http_port: int | None = None
) -> Iterator[tuple[str, Path]]:
    """(broker URL, the gateway's trust file) while both run; their files under `tmp`, its
    data dir `tmp/gw`, its HTTP API on `http_port` (default: a free port)."""
    broker = MosquittoProcess(str(tmp / "mosquitto"))
    broker.start()
    gw_log = (tmp / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgemart",
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--data-dir",
            str(tmp / "gw"),
            "--http-port",
            str(http_port or free_port()),
        ],
        stdout=gw_log,
        stderr=subprocess.STDOUT,
    )
    try:
        trust = tmp / "gw" / "trust.json"
        deadline = time.monotonic() + timeout
        while not trust.exists():
            if time.monotonic() > deadline or gateway.poll() is not None:
                raise RuntimeError(f"gateway did not start (log: {tmp / 'gateway.log'})")
            time.sleep(0.1)
        yield broker.url, trust
    finally:
        gateway.terminate()
        gateway.wait(30)
        gw_log.close()
        broker.stop()
