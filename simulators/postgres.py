"""A private PostgreSQL server for tests, benchmarks and QA fleets: `initdb` into a directory
of its own, started on a free loopback port, stopped or SIGKILLed like any other process.

PostgreSQL refuses to run as root, so when the caller is root the cluster belongs to an
unprivileged user (`postgres` from Debian's package, else `nobody`) and lives in a directory
that user may enter (pytest's own temporary directories are mode 0700 under root). Unix
sockets are off: the server listens on 127.0.0.1 only, so it never meets the machine's own
PostgreSQL on 5432.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from simulators.brokers import free_port

DATABASE = "edgemart"
SUPERUSER = "edgemart"
START_TIMEOUT_S = 30.0


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine (the test command installs them)."""


def bin_dir() -> Path:
    """The directory of `initdb`, `postgres` and `pg_isready`: Debian's versioned layout
    (newest first), else `pg_config --bindir`, else where `postgres` is on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run(  # noqa: S603  # a fixed argv
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
        path = Path(done.stdout.strip())
        if done.returncode == 0 and (path / "postgres").exists():
            return path
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise PostgresMissing(
        "PostgreSQL is not installed (no postgres binary): scripts/test.sh installs it"
    )


def _run_as() -> str | None:
    """The unprivileged user the server runs as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresMissing("running as root and no unprivileged user (postgres, nobody) exists")


class PostgresProcess:
    """`start()` makes (once) and starts the cluster; `url` is its connection string.

    `fast` turns off fsync and full-page writes: a killed server loses nothing it
    committed (the kernel still holds the pages), only a power cut could, which no test
    makes. Benchmarks that compare with durable engines pass `fast=False`.
    """

    def __init__(self, base_dir: str | Path | None = None, *, fast: bool = True) -> None:
        self.user = _run_as()
        if base_dir is None or self.user is not None:
            # Under root, pytest's directories are closed to the server's user.
            base_dir = tempfile.mkdtemp(prefix="edgemart-pg-")
        self.base = Path(base_dir)
        self.data = self.base / "data"
        self.log_path = self.base / "postgres.log"
        self.port = free_port()
        self.fast = fast
        self.proc: subprocess.Popen[bytes] | None = None
        self._bin = bin_dir()

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._chown(self.base)
        self.log_path.touch()
        self._chown(self.log_path)
        cmd = [
            str(self._bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        done = subprocess.run(  # noqa: S603  # our own argv, no shell
            cmd, user=self.user, capture_output=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        settings = [
            "listen_addresses=127.0.0.1",
            f"port={self.port}",
            "unix_socket_directories=",
            "max_connections=200",
            "shared_buffers=128MB",
        ]
        if self.fast:
            settings += ["fsync=off", "full_page_writes=off"]
        cmd = [str(self._bin / "postgres"), "-D", str(self.data)]
        for item in settings:
            cmd += ["-c", item]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603  # our own argv, no shell
                cmd, user=self.user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready()
        self._ensure_database()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
                continue
            done = subprocess.run(  # noqa: S603  # our own argv
                [str(self._bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres not ready in {START_TIMEOUT_S}s: {self.tail()}")

    def _ensure_database(self) -> None:
        psql = str(self._bin / "psql")
        base = [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-X", "-q"]
        exists = subprocess.run(  # noqa: S603  # our own argv
            [
                *base,
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname='{DATABASE}'",  # noqa: S608  # a constant
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        if exists.stdout.strip() != b"1":
            subprocess.run(  # noqa: S603  # our own argv
                [*base, "-d", "postgres", "-c", f"CREATE DATABASE {DATABASE}"],
                capture_output=True,
                timeout=30,
                check=True,
            )

    def tail(self, nbytes: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-nbytes:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """A fast shutdown (SIGINT: open transactions roll back, the server exits)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (a crash: recovery runs at the next start)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
