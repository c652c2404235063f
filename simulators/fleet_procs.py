"""The processes `edgemart fleet` coordinates: the gateway (the real `edgemart gateway run`,
killed with SIGKILL and started again on the same data and port by `gateway-restart`) and
the agent workers (`simulators.fleet_worker`, one per core, spoken to over JSON lines)."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from simulators.faults import EDGEMART
from simulators.fleet_worker import WorkerPlan

READY = re.compile(r"gateway ready on (http://\S+) trust=(\S+)")


class GatewayProcess:
    """`edgemart gateway run` on a fixed loopback port, its output in `log`."""

    def __init__(
        self, *, broker: str, data_dir: Path, http_port: int, topic_root: str, log: Path
    ) -> None:
        self.args = [
            *EDGEMART,
            *("gateway", "run", "--broker", broker, "--data-dir", str(data_dir)),
            *("--http-port", str(http_port), "--topic-root", topic_root),
        ]
        self.data_dir = data_dir
        self.api = f"http://127.0.0.1:{http_port}"
        self.trust_path = data_dir / "trust.json"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.counters: Counter[str] = Counter()
        """`GET /v1/stats` of the gateways that were stopped, read just before."""

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait for its `gateway ready` line. Blocking."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        if self.proc is None:
            atexit.register(self.reap)
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
                self.args,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log.open("rb") as handle:
                handle.seek(offset)
                found = READY.search(handle.read().decode(errors="replace"))
            if found:
                self.trust_path = Path(found.group(2))
                return
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{tail}")
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not say ready within {timeout} s (log: {self.log})")

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """`GET /v1/stats` (public counters), or {} when it does not answer."""
        from cloud_gateway.security.auth import create_token  # noqa: PLC0415

        token = await asyncio.to_thread(create_token, self.data_dir)
        try:
            async with http.get(
                f"{self.api}/v1/stats",
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                body: dict[str, Any] = await resp.json()
                return body if resp.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}

    async def crash(self, http: aiohttp.ClientSession) -> None:
        """SIGKILL (its counters read first: they die with it)."""
        self._keep(await self.stats(http))
        await asyncio.to_thread(self._signal, signal.SIGKILL)

    async def stop(self, http: aiohttp.ClientSession) -> None:
        """SIGTERM (graceful), SIGKILL after 20 s; whatever happens on the way, it ends."""
        try:
            self._keep(await self.stats(http))
            await asyncio.to_thread(self._signal, signal.SIGTERM)
        finally:
            self.reap()

    def reap(self) -> None:
        """SIGKILL if it still runs (also at the fleet process's exit: never an orphan)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _keep(self, stats: dict[str, Any]) -> None:
        self.counters.update({k: v for k, v in stats.items() if isinstance(v, int)})

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerProcess:
    """One `simulators.fleet_worker` child and its command pipe."""

    def __init__(self, index: int, plan: WorkerPlan, log: Path) -> None:
        self.index = index
        self.plan = plan
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.start_s = 0.0
        self.offer_at: dict[str, float] = {}

    @property
    def devices(self) -> int:
        return len(self.plan.households) * 4

    async def start(self) -> None:
        with self.log.open("ab") as handle:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "simulators.fleet_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=handle,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        await self._send(self.plan.to_json())
        ready = await self._answer()
        self.start_s = float(ready["start_s"])

    async def _send(self, line: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def _answer(self) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fleet worker {self.index} exited with {code}:\n{tail}")
        body: dict[str, Any] = json.loads(line)
        if "error" in body:
            raise RuntimeError(f"fleet worker {self.index}: {body['error']}")
        return body

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        await self._send(json.dumps({"cmd": cmd, **args}))
        return await self._answer()

    async def collect(self, path: Path) -> list[tuple[str, list[str], dict[str, Any]]]:
        """Each device's (id, accepted ids, status); when each had the offers: `offer_at`."""
        await self.call("collect", path=str(path))
        collected = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
        self.offer_at = {d: float(at) for d, at in collected["offer_at"].items()}
        return [(device, accepted, status) for device, accepted, status in collected["seen"]]

    async def stop(self) -> None:
        """Every household stopped, then the process gone (killed if it does not end)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(self.call("stop"), 300)
            await asyncio.wait_for(self.proc.wait(), 30)
        except (RuntimeError, TimeoutError, ConnectionError, OSError):
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
