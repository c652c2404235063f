"""An agent on a fake transport (no broker), its signer and its local API in-process: what the
agent tests of the local API share (`tests/agent/conftest.py` makes fixtures of it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from agent.api.local import LocalApi
from agent.api.owners import admin_headers
from agent.config import load_settings
from agent.decide.remote import RemoteRanker
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.signing import Signer
from tests.support.builders import offer, signed_ack, signed_bundle, unpaced
from tests.support.fake_transport import FakeTransports

SURFACE = "tv_home_banner"


class Device:
    """An agent on a fake transport, its signer (the gateway's key) and its API client."""

    def __init__(self, agent: Agent, transports: FakeTransports, signer: Signer) -> None:
        self.agent = agent
        self.transports = transports
        self.signer = signer

    def ack(self, seqs: Sequence[int], refused: Sequence[dict[str, Any]] | None = None) -> bytes:
        """A signed ack of `seqs` (and refusals) of this device's outbox, as the gateway's."""
        agent = self.agent
        return signed_ack(
            self.signer, agent.settings.device_id, seqs, agent.store.outbox_id, refused
        )

    def bundle(self, offers: list[tuple[str, float, int]]) -> bytes:
        """A signed bundle of `(id, discount, priority)` offers for this device."""
        return signed_bundle(
            self.signer, [offer(oid, discount=d, priority=p) for oid, d, p in offers]
        )


@contextlib.asynccontextmanager
async def running_device(
    tmp_path: Path,
    *,
    profile: str = "tv",
    overrides: dict[str, Any] | None = None,
    root: Signer | None = None,
    timer: Callable[[], float] = time.monotonic,
    remote: RemoteRanker | None = None,
) -> AsyncIterator[Device]:
    """A started agent of `profile` over a fake transport, its data in `tmp_path/data`; with
    `root`, its trust file pins that offline root (issue 14); `timer`: its monotonic clock
    of resends and pacing (a test's fake one); `remote`: who ranks for a thin device."""
    signer = Signer.generate("k1")
    trust = tmp_path / "trust.json"
    pinned = TrustFile(keys=[signer.public], topic_root="tin/v1", root=root and root.public)
    trust.write_bytes(codec.encode(pinned))
    base = {"uplink": {"batch_max_age_s": 0.05}, "topic_root": "tin/v1"}
    settings = load_settings(
        profile=profile,
        device_id="tv-inproc",
        broker="mqtt://127.0.0.1:9",  # never dialled: the transport is fake
        data_dir=tmp_path / "data",
        api_port=None,
        trust=trust,
        overrides={
            **base,
            **(overrides or {}),
            "decisions": unpaced((overrides or {}).get("decisions")),
        },
        environ={},
    )
    transports = FakeTransports()
    async with Agent(settings, transport=transports, timer=timer, remote=remote) as agent:
        yield Device(agent, transports, signer)


class Client:
    """The device's local API served in-process on a free loopback port, and an HTTP client
    of it that takes paths (`await client.get("/v1/status")`), as aiohttp's test client."""

    def __init__(self, api: LocalApi, headers: dict[str, str]) -> None:
        self.api = api
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    async def start_server(self) -> None:
        port = await self.api.start()
        self._session = aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{port}", headers=self._headers
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.api.stop()

    async def __aenter__(self) -> Client:
        await self.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start_server() first"
        return self._session

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Any:
        return self.session.head(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.session.put(path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.session.delete(path, **kwargs)


async def api_client(device: Device, headers: dict[str, str] | None = None) -> Client:
    """A client (not started) of the device's local API in-process, sending `headers`; by
    default the admin app's (the all-scopes token the agent wrote on its first start)."""
    if headers is None:
        headers = await asyncio.to_thread(admin_headers, device.agent.settings.data_dir)
    return Client(LocalApi(device.agent, port=0), headers)
