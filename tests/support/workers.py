"""A fleet of real gateway worker processes on one PostgreSQL and one broker, sharing the
uplink through `$share/gateway/...`, and devices that resend each batch until it is acked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port
from tests.support.builders import make_batch
from tests.support.processes import start_gateway, stop


@dataclass
class Fleet:
    """Gateway workers `edgemart gateway run --db URL --shared-group gateway`, one signing key."""

    broker: MosquittoProcess
    db_url: str
    tmp: Path
    root: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:8]}/v1")
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    token: str = ""

    @property
    def topics(self) -> Topics:
        return Topics(self.root)

    def log(self, n: int) -> Path:
        return self.tmp / f"worker{n}.log"

    async def add(self, n: int) -> subprocess.Popen[bytes]:
        """Start worker `n` (its own data directory and client id; worker 0's key)."""
        data = self.tmp / f"gw{n}"
        if n and not (data / "keys").exists():
            shutil.copytree(self.tmp / "gw0" / "keys", data / "keys")
        self.ports[n] = free_port()
        extra = ("--topic-root", self.root, "--db", self.db_url, "--shared-group", "gateway")
        proc = await start_gateway(
            self.broker.url, data, self.ports[n], self.log(n), *extra, timeout=30
        )
        self.procs[n] = proc
        if not self.token:
            self.token = await asyncio.to_thread(create_token, data, db=self.db_url)
        return proc

    async def get(self, n: int, path: str) -> Any:
        auth = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession(headers=auth) as http,
            http.get(f"http://127.0.0.1:{self.ports[n]}{path}") as resp,
        ):
            assert resp.status == 200, await resp.text()
            return await resp.json()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop(proc)


class Devices:
    """`count` devices with `per_device` batches each (2 signals a batch), sent over a few
    connections and resent, like an agent's outbox, until each is acked."""

    def __init__(self, topics: Topics, count: int, per_device: int, connections: int = 8) -> None:
        self.topics = topics
        self.connections = connections
        self.outbox = uuid.uuid4().hex[:12]
        self.payloads: dict[tuple[str, int], bytes] = {}
        for d in range(count):
            device = f"wk-{d:04d}"
            for seq in range(1, per_device + 1):
                batch = make_batch(device, seq, 2).model_copy(update={"outbox_id": self.outbox})
                self.payloads[(device, seq)] = codec.encode(batch)
        self.acked: set[tuple[str, int]] = set()
        self.sends = 0

    @property
    def unacked(self) -> list[tuple[str, int]]:
        return [k for k in self.payloads if k not in self.acked]

    async def run(self, port: int, rate: float, resend_after_s: float, timeout: float) -> None:
        """First sends at `rate` batches/s, then every unacked batch again each
        `resend_after_s` until all are acked (or `timeout`)."""
        async with contextlib.AsyncExitStack() as stack:
            sub = await stack.enter_async_context(
                aiomqtt.Client("127.0.0.1", port, identifier=f"acks-{uuid.uuid4().hex[:6]}")
            )
            await sub.subscribe(f"{self.topics.root}/dev/+/down/ack", qos=1)
            pubs = [
                await stack.enter_async_context(
                    aiomqtt.Client("127.0.0.1", port, identifier=f"dev{i}-{uuid.uuid4().hex[:6]}")
                )
                for i in range(self.connections)
            ]
            collector = asyncio.create_task(self._collect(sub), name="acks")
            try:
                async with asyncio.timeout(timeout):
                    await self._send(pubs, list(self.payloads), rate)
                    while self.unacked:
                        await asyncio.sleep(resend_after_s)
                        await self._send(pubs, self.unacked, 0)
            finally:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector

    async def _send(
        self, pubs: list[aiomqtt.Client], keys: list[tuple[str, int]], rate: float
    ) -> None:
        start = time.monotonic()
        for i in range(0, len(keys), 50):
            chunk = keys[i : i + 50]
            await asyncio.gather(
                *(
                    pubs[j % len(pubs)].publish(self.topics.batch(k[0]), self.payloads[k], qos=1)
                    for j, k in enumerate(chunk)
                    if k not in self.acked
                )
            )
            self.sends += len(chunk)
            if rate:
                ahead = (i + len(chunk)) / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    async def _collect(self, sub: aiomqtt.Client) -> None:
        async for message in sub.messages:
            assert isinstance(message.payload, bytes)
            device = str(message.topic).split("/")[-3]
            ack = json.loads(message.payload)
            if ack.get("outbox_id") == self.outbox:
                self.acked.update((device, seq) for seq in ack["acks"])
