"""The embedded MQTT broker (amqtt) for demos and laptops: zero install, one event loop.

Not for production: amqtt 0.12.1 does not redeliver queued QoS 1 messages to a returning
persistent session (DESIGN.md), which is why delivery is guaranteed end to end, not here.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import random
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from amqtt.broker import Broker

log = logging.getLogger(__name__)


LISTEN_PORTS = range(20000, 32768)
"""Where `free_port` looks: below Linux's ephemeral range (32768-60999 by default), so a port
handed out here and released again (a broker killed, then restarted on it) is not taken in
between by another process's `bind(0)` or outgoing connection."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on `host`, drawn at random from `LISTEN_PORTS` (the kernel's own choice
    when none of a few draws is free)."""
    rng = random.SystemRandom()
    for _ in range(50):
        port = rng.choice(LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


SHUTDOWN_TIMEOUT_S = 15.0


class EmbeddedBroker:
    """`async with EmbeddedBroker() as broker:` serves MQTT on `broker.url` (loopback only)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    async def __aenter__(self) -> EmbeddedBroker:
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._broker = Broker(self._config())
        await self._broker.start()
        log.info("embedded amqtt broker listening on %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is None:
            return
        broker, self._broker = self._broker, None
        try:
            await asyncio.wait_for(broker.shutdown(), SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            # amqtt 0.12.1 can hang in shutdown while clients reconnect to it (seen in fleet
            # runs that restart it); close its listeners so that the port is free again.
            log.error(  # noqa: TRY400 - a timeout: no traceback worth showing
                "amqtt did not shut down within %.0f s; closing its listeners", SHUTDOWN_TIMEOUT_S
            )
            for server in broker._servers.values():
                if server.instance is not None:
                    server.instance.close()


class MosquittoProcess:
    """A private Mosquitto on a free loopback port, for tests, benchmarks and fault runs.

    `start()` waits until it accepts connections; `kill()` sends SIGKILL (a crash),
    `stop()` SIGTERM; `start()` again restarts it on the same port and persistence file.
    """

    def __init__(
        self,
        workdir: str,
        port: int = 0,
        binary: str | None = None,
        *,
        config: str | None = None,
        tls: bool = False,
        max_files: int | None = None,
    ) -> None:
        """`config`: the whole configuration to run instead of the open test one; it must
        listen on `port` (give one: `free_port()`). `tls`: that listener speaks TLS.
        `max_files`: its soft limit on open files (a socket per client) raised to this in
        the child before it runs (a fleet of thousands of devices); the open config also
        sets `max_connections -1` (no cap) then."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        found = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.binary = found
        self.tls = tls
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(
            config
            or (
                f"listener {self.port} 127.0.0.1\n"
                "allow_anonymous true\n"
                "persistence true\n"
                f"persistence_location {self.workdir}/\n"
                "autosave_interval 1\n"
                "max_queued_messages 100000\n"
                "max_inflight_messages 100\n"
                f"{'max_connections -1' + chr(10) if max_files else ''}"
                "log_dest none\n"
            )
        )
        self.max_files = max_files
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _raise_limit(self) -> None:
        """In the child before exec: RLIMIT_NOFILE's soft limit up to `max_files` (capped
        by the hard limit)."""
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.max_files or hard
        resource.setrlimit(
            resource.RLIMIT_NOFILE,
            (want if hard == resource.RLIM_INFINITY else min(want, hard), hard),
        )

    def start(self, timeout: float = 10.0) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - fixed binary, our own config file
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=self._raise_limit if self.max_files else None,  # noqa: PLW1509
        )
        proc = self._proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                code = proc.returncode
                raise RuntimeError(f"mosquitto exited with {code} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def pause(self) -> None:
        """SIGSTOP: the broker holds its sockets open and answers nothing (a hung broker)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


DEVICE_ACL = """\
user gateway
topic read {root}/dev/+/up/#
topic read {root}/dev/+/state
topic write {root}/dev/+/down/#
topic write {root}/cohort/#
topic write {root}/models/#
topic write {root}/keys
topic write {root}/timestamp

pattern write {root}/dev/%u/up/#
pattern readwrite {root}/dev/%u/state
pattern read {root}/dev/%u/down/#
pattern read {root}/cohort/#
pattern read {root}/models/#
pattern read {root}/keys
pattern read {root}/timestamp
"""
"""`deploy/edgemart.acl` for a topic root: `%u` is the device id (its certificate's CN)."""


def mtls_config(
    workdir: Path,
    *,
    device_port: int,
    gateway_port: int,
    tls: dict[str, Path],
    gateway_password: str,
    root: str = "edgemart/v1",
) -> str:
    """A Mosquitto configuration for provisioned devices: on `device_port` mutual TLS only
    (`require_certificate`, `use_identity_as_username`: a device is the CN of its certificate;
    `crlfile`: revoked ones are refused at connect), on `gateway_port` (loopback) the gateway
    with a password; one ACL pattern confines each device to its own topics.

    `tls`: `cafile`, `certfile`, `keyfile`, `crlfile`. Writes the ACL and password files
    into `workdir` (blocking: needs `mosquitto_passwd`)."""
    acl = workdir / "edgemart.acl"
    acl.write_text(DEVICE_ACL.format(root=root))
    passwd = workdir / "gateway.passwd"
    passwd.write_text("")
    subprocess.run(  # noqa: S603 - fixed binary and arguments
        [
            shutil.which("mosquitto_passwd") or "mosquitto_passwd",
            "-b",
            str(passwd),
            "gateway",
            gateway_password,
        ],
        check=True,
        capture_output=True,
    )
    tls_lines = "".join(f"{key} {path}\n" for key, path in tls.items())
    return (
        # Started as root, Mosquitto drops to its own user, which could not read tmp paths.
        f"user {getpass.getuser()}\n"
        "per_listener_settings true\n"
        f"persistence true\npersistence_location {workdir}/\nlog_dest none\n"
        # where `edgemart gateway provision revoke --broker-pid-file` finds it (SIGHUP)
        f"pid_file {workdir}/mosquitto.pid\n"
        f"listener {device_port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"{tls_lines}"
        "require_certificate true\n"
        "use_identity_as_username true\n"
        f"acl_file {acl}\n"
        f"listener {gateway_port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {acl}\n"
    )
