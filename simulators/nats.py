"""A private NATS cluster speaking MQTT 3.1.1 with JetStream: the broker-cluster test tier.

DESIGN.md's scale path runs an MQTT broker cluster. EMQX cannot be installed on the development
machines; Debian's `nats-server` (2.9) clusters, keeps MQTT sessions, retained messages and
QoS 1 queues in JetStream streams replicated on every node (`stream_replicas: 3`), and so lets
tests kill a real node and watch what survives. Each node listens on free loopback ports only
(never the machine's own NATS on 4222). `docs/brokers.md` says what the tier proved.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from simulators.brokers import free_port

CLUSTER_NAME = "edgemart"
# Redelivery of an unacknowledged QoS 1 message to a returning session waits for the
# JetStream consumer's ack wait (30 s by default): short here so that tests see it.
ACK_WAIT = "2s"
LOG_TAIL_LINES = 25
# the streams NATS keeps MQTT state in (nats-server 2.9): sessions, QoS 1 messages, retained
MQTT_STREAMS = frozenset({"$MQTT_sess", "$MQTT_msgs", "$MQTT_rmsgs"})


class NatsClusterError(RuntimeError):
    """A node did not start or become ready; the message carries the node's log tail."""


@dataclass(frozen=True, slots=True)
class NodePorts:
    """The loopback ports of one node, fixed for its life so that a restart reuses them."""

    client: int
    cluster: int
    mqtt: int
    http: int


def _node_config(name: str, store: Path, ports: NodePorts, routes: list[int]) -> str:
    route_urls = ", ".join(f"nats-route://127.0.0.1:{port}" for port in routes)
    return f"""server_name: {name}
listen: 127.0.0.1:{ports.client}
http: 127.0.0.1:{ports.http}
jetstream {{
  store_dir: '{store}'
  max_mem: 64MB
  max_file: 512MB
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{ports.cluster}
  routes: [{route_urls}]
}}
mqtt {{
  listen: 127.0.0.1:{ports.mqtt}
  stream_replicas: 3
  consumer_replicas: 3
  ack_wait: "{ACK_WAIT}"
}}
"""


def mqtt_connect_ok(port: int, timeout: float = 2.0) -> bool:
    """One real MQTT 3.1.1 CONNECT (clean session) and its CONNACK: True when accepted."""
    client_id = b"edgemart-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    packet = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(packet)
            ack = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return len(ack) == 4 and ack[0] == 0x20 and ack[3] == 0


def _streams_with_leader(jsz: dict[str, object] | None) -> set[str]:
    """The streams this node's `/jsz?accounts=true&streams=true` shows with a leader."""
    found: set[str] = set()
    accounts = jsz.get("account_details") if jsz else None
    for account in accounts if isinstance(accounts, list) else []:
        for stream in account.get("stream_detail") or []:
            cluster = stream.get("cluster") or {}
            if cluster.get("leader"):
                found.add(stream.get("name"))
    return found


def _http_json(port: int, path: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1.0) as resp:
            data: dict[str, object] = json.loads(resp.read())
            return data
    except (OSError, urllib.error.URLError, ValueError):
        return None


class NatsCluster:
    """`NatsCluster(base_dir).start_all()` runs `nodes` nats-servers clustered on loopback.

    Nodes are numbered from 0. `kill(i)` is a crash (SIGKILL); `start(i)` brings the node back
    with the same configuration, ports and JetStream store; `stop()` ends every node.
    """

    def __init__(self, base_dir: str | Path, nodes: int = 3, binary: str | None = None) -> None:
        if nodes < 3:
            raise ValueError("stream_replicas is pinned to 3: the cluster needs 3 nodes or more")
        self.base_dir = Path(base_dir)
        self.binary = binary or shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.ports = [
            NodePorts(free_port(), free_port(), free_port(), free_port()) for _ in range(nodes)
        ]
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * nodes
        for i, ports in enumerate(self.ports):
            node_dir = self._dir(i)
            (node_dir / "jetstream").mkdir(parents=True, exist_ok=True)
            routes = [p.cluster for j, p in enumerate(self.ports) if j != i]
            config = _node_config(f"n{i}", node_dir / "jetstream", ports, routes)
            (node_dir / "nats.conf").write_text(config)

    def __enter__(self) -> NatsCluster:
        self.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def size(self) -> int:
        return len(self.ports)

    def _dir(self, i: int) -> Path:
        return self.base_dir / f"n{i}"

    def log_path(self, i: int) -> Path:
        return self._dir(i) / "nats.log"

    def log_tail(self, i: int, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path(i).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def mqtt_url(self, i: int) -> str:
        return f"mqtt://127.0.0.1:{self.ports[i].mqtt}"

    def mqtt_port(self, i: int) -> int:
        return self.ports[i].mqtt

    def alive(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    def _spawn(self, i: int) -> None:
        if self.alive(i):
            return
        if shutil.which(self.binary) is None and not Path(self.binary).exists():
            raise NatsClusterError(f"nats-server not found at {self.binary}")
        with self.log_path(i).open("ab") as log:
            self._procs[i] = subprocess.Popen(  # noqa: S603 - fixed binary, our own config file
                [self.binary, "-c", str(self._dir(i) / "nats.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_all(self, timeout: float = 30.0) -> None:
        """Start every node, then wait until each is ready (see `wait_ready`)."""
        for i in range(self.size):
            self._spawn(i)
        try:
            for i in range(self.size):
                self.wait_ready(i, timeout)
        except BaseException:
            self.stop()
            raise

    def start(self, i: int, timeout: float = 30.0) -> None:
        """Restart node `i` (same config, ports and store) and wait until it is ready."""
        self._spawn(i)
        self.wait_ready(i, timeout)

    def wait_ready(self, i: int, timeout: float = 30.0) -> None:
        """Until node `i` is healthy, knows a JetStream meta leader, and accepts an MQTT
        CONNECT; raises `NatsClusterError` with its log tail past `timeout`."""
        deadline = time.monotonic() + timeout
        ports = self.ports[i]
        step = "health"
        while time.monotonic() < deadline:
            proc = self._procs[i]
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise NatsClusterError(
                    f"nats node n{i} exited with {code}; log tail:\n{self.log_tail(i)}"
                )
            # js-server-only: the full check also wants every consumer replica current, and
            # the replicas a killed node held of other nodes' consumers may never catch up
            health = _http_json(ports.http, "/healthz?js-server-only=true")
            jsz = _http_json(ports.http, "/jsz?accounts=true&streams=true")
            meta = jsz.get("meta_cluster") if jsz else None
            if health is None or health.get("status") != "ok":
                step = f"health {health}"
            elif not isinstance(meta, dict) or not meta.get("leader"):
                step = "JetStream meta leader"
            elif not mqtt_connect_ok(ports.mqtt):
                step = "MQTT CONNECT"
            elif missing := MQTT_STREAMS - _streams_with_leader(jsz):
                step = f"leaders of {sorted(missing)}"
            else:
                return
            time.sleep(0.1)
        raise NatsClusterError(
            f"nats node n{i} not ready within {timeout:.0f} s (waiting for {step}); "
            f"log tail:\n{self.log_tail(i)}"
        )

    def kill(self, i: int) -> None:
        """SIGKILL node `i`: a crash, no goodbye to its clients or its peers."""
        proc = self._procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """End every node (SIGTERM, then SIGKILL after 10 s)."""
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
