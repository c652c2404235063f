"""The processes `edgemart fleet` coordinates: the gateway (the real `edgemart gateway run`,
killed with SIGKILL and started again on the same data and port by `gateway-restart`) and
the agent workers (`simulators.fleet_worker`, one per core, spoken to over JSON lines)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
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

from simulators.cost import process_cpu_s
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
        self.cpu_gone_s = 0.0
        """CPU seconds of the gateway processes that were killed, read just before."""

    @property
    def pid(self) -> int | None:
        """The running gateway's process id (a new one after a restart), None while down."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def up(self) -> bool:
        """Running (not between a kill and its restart)."""
        return self.pid is not None

    def cpu_s(self) -> float:
        """CPU seconds of every gateway process of the run so far (killed ones included)."""
        pid = self.pid
        if pid is None:
            return self.cpu_gone_s
        try:
            return self.cpu_gone_s + process_cpu_s(pid)
        except OSError:  # it just ended
            return self.cpu_gone_s

    def _note_cpu(self) -> None:
        self.cpu_gone_s = self.cpu_s()

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

    def token(self) -> str:
        """A new operator token, made in its data folder. Blocking."""
        from cloud_gateway.security.auth import create_token  # noqa: PLC0415

        return create_token(self.data_dir)

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """`GET /v1/stats` (public counters), or {} when it does not answer."""
        return await read_stats(http, self.api, await asyncio.to_thread(self.token))

    async def crash(self, http: aiohttp.ClientSession) -> None:
        """SIGKILL (its counters read first: they die with it)."""
        self._keep(await self.stats(http))
        self._note_cpu()
        await asyncio.to_thread(self._signal, signal.SIGKILL)

    async def stop(self, http: aiohttp.ClientSession) -> None:
        """SIGTERM (graceful), SIGKILL after 20 s; whatever happens on the way, it ends."""
        try:
            self._keep(await self.stats(http))
            self._note_cpu()
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


async def read_stats(http: aiohttp.ClientSession, api: str, token: str) -> dict[str, Any]:
    """`GET /v1/stats` of the gateway at `api`, or {} when it does not answer."""
    try:
        async with http.get(
            f"{api}/v1/stats",
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            body: dict[str, Any] = await resp.json()
            return body if resp.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}


class SharedGateway:
    """A gateway this run did not start (`edgemart fleet --gateway URL`, shared by the shards
    of a fleet on several machines): used over its API with the operator token it was given,
    its devices trusting the `--trust` file. It is not this run's to restart (the faults that
    would need that are refused up front) and its process is not measured (no pid, no CPU)."""

    def __init__(self, api: str, token: str, trust: Path) -> None:
        self.api = api.rstrip("/")
        self.trust_path = trust
        self._token = token
        self.counters: Counter[str] = Counter()
        """Always empty: its counters are the whole fleet's, not this run's."""

    @property
    def pid(self) -> int | None:
        return None

    @property
    def up(self) -> bool:
        """Taken to run: whether it answers shows in each call."""
        return True

    def cpu_s(self) -> float:
        return 0.0

    def token(self) -> str:
        return self._token

    def start(self) -> None:
        """Nothing to start: it runs already."""

    async def stop(self, http: aiohttp.ClientSession) -> None:
        """Nothing to stop: other runs use it."""

    async def crash(self, http: aiohttp.ClientSession) -> None:
        raise RuntimeError("a shared gateway (--gateway) is not this run's to restart")

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        return await read_stats(http, self.api, self._token)


class WorkerProcess:
    """One `simulators.fleet_worker` child and its command pipe: calls may overlap (a
    probe while a round runs), each answer is matched to its call by id."""

    def __init__(self, index: int, plan: WorkerPlan, log: Path) -> None:
        self.index = index
        self.plan = plan
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.start_s = 0.0
        self.cpu_s = 0.0
        self.lan: list[dict[str, Any]] = []
        """With `--lan`: each of its households' LAN report (`Worker.lan_reports`), at collect."""
        """Its CPU seconds at the last `read_cpu` (kept when it has ended)."""
        self._calls = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @property
    def devices(self) -> int:
        return self.plan.device_count

    def read_cpu(self) -> float:
        """Its CPU seconds so far (/proc), or the last reading once it has ended."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(OSError):  # it just ended
                self.cpu_s = process_cpu_s(self.proc.pid)
        return self.cpu_s

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
                limit=2**24,
            )
        await self._send(self.plan.to_json())
        ready = self._checked(await self._line())
        self.start_s = float(ready["start_s"])
        self._reader = asyncio.create_task(self._read(), name=f"fleet-worker-{self.index}")

    async def _send(self, line: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def _line(self) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fleet worker {self.index} exited with {code}:\n{tail}")
        body: dict[str, Any] = json.loads(line)
        return body

    def _checked(self, body: dict[str, Any]) -> dict[str, Any]:
        if "error" in body:
            raise RuntimeError(f"fleet worker {self.index}: {body['error']}")
        return body

    async def _read(self) -> None:
        """Each answer to the call waiting for its id; when the worker ends, every waiting
        call fails with its exit code and log tail."""
        try:
            while True:
                body = await self._line()
                key = body.pop("id", None)
                waiting = self._waiting.pop(key if isinstance(key, int) else -1, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(body)
        except (RuntimeError, ValueError, OSError) as exc:
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(RuntimeError(str(exc)))
            self._waiting.clear()

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        if self._reader is None or self._reader.done():
            raise RuntimeError(f"fleet worker {self.index} is not running")
        self._calls += 1
        answer = asyncio.get_running_loop().create_future()
        self._waiting[self._calls] = answer
        await self._send(json.dumps({"cmd": cmd, "id": self._calls, **args}))
        return self._checked(await answer)

    async def collect(
        self, path: Path
    ) -> tuple[list[tuple[str, list[str], dict[str, Any]]], dict[int, dict[str, Any]]]:
        """Each device's (id, accepted ids, status), and what each launch watch saw."""
        await self.call("collect", path=str(path))
        collected = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
        self.lan = list(collected.get("lan", []))
        seen = [(device, accepted, status) for device, accepted, status in collected["seen"]]
        return seen, {int(k): w for k, w in collected["launches"].items()}

    async def stop(self) -> None:
        """Every household stopped, then the process gone (killed if it does not end)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.read_cpu()
        try:
            await asyncio.wait_for(self.call("stop"), 300)
            await asyncio.wait_for(self.proc.wait(), 30)
        except (RuntimeError, TimeoutError, ConnectionError, OSError):
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        finally:
            if self._reader is not None:
                self._reader.cancel()
