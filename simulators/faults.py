"""Fault injection for QA runs: real agent processes killed with SIGKILL and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent.api.owners import read_admin_token

EDGEMART = [sys.executable, "-m", "edgemart"]


class AgentProcess:
    """`edgemart agent run` as a child process; `kill()` is a crash (SIGKILL), `start()`
    brings it back on the same data dir and port, as a device would after a power cut."""

    def __init__(  # the flags of `edgemart agent run`
        self,
        *,
        profile: str,
        device_id: str,
        broker: str,
        data_dir: Path,
        api_port: int,
        trust: Path,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = [
            *EDGEMART,
            "agent",
            "run",
            "--profile",
            profile,
            "--device-id",
            device_id,
            "--broker",
            broker,
            "--data-dir",
            str(data_dir),
            "--api-port",
            str(api_port),
            "--trust",
            str(trust),
        ]
        self.device_id = device_id
        self.data_dir = data_dir
        self.api = f"http://127.0.0.1:{api_port}"
        self.log = log
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def spawn(self) -> None:
        """Start without waiting (to crash it again while it opens its store)."""
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
                self.args, stdout=handle, stderr=subprocess.STDOUT, env=self.env
            )

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until the local API answers `/healthz`."""
        self.spawn()
        assert self.proc is not None  # set by spawn
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.api}/healthz", timeout=1) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"agent API {self.api} did not answer within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, nothing but what is on disk survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (graceful: flush, goodbye); SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def token(self) -> str:
        """The agent's all-scopes local API token (`DATA_DIR/tokens/admin.token`, written on
        its first start). Blocking: reads the file."""
        return read_admin_token(self.data_dir)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
