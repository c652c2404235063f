"""An agent on a fake transport (no broker), its signer and its local API in-process: what the
agent tests of the local API share (`tests/agent/conftest.py` makes fixtures of it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from agent.config import load_settings
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from tests.support.fake_transport import FakeTransports

SURFACE = "tv_home_banner"
Client = TestClient[Any, Any]


class Device:
    """An agent on a fake transport, its signer (the gateway's key) and its API client."""

    def __init__(self, agent: Agent, transports: FakeTransports, signer: Signer) -> None:
        self.agent = agent
        self.transports = transports
        self.signer = signer

    def bundle(self, offers: list[tuple[str, float, int]]) -> bytes:
        """A signed bundle of `(id, discount, priority)` offers for this device."""
        now = utcnow()
        body = {
            "v": 1,
            "id": new_id(),
            "issued_at": format_time(now),
            "expires_at": format_time(now + timedelta(hours=1)),
            "offers": [
                {
                    "id": oid,
                    "campaign_id": f"c-{oid}",
                    "type": "coupon",
                    "title": f"Offer {oid}",
                    "category": "groceries",
                    "price": 20.0,
                    "discount": discount,
                    "priority": priority,
                    "surfaces": [SURFACE],
                    "starts_at": format_time(now - timedelta(minutes=5)),
                    "expires_at": format_time(now + timedelta(days=1)),
                }
                for oid, discount, priority in offers
            ],
        }
        return codec.dumps(self.signer.sign(body))


@contextlib.asynccontextmanager
async def running_device(
    tmp_path: Path,
    *,
    profile: str = "tv",
    overrides: dict[str, Any] | None = None,
    timer: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Device]:
    """A started agent of `profile` over a fake transport, its data in `tmp_path/data`;
    `timer`: its monotonic clock of resends and pacing (a test's fake one)."""
    signer = Signer.generate("k1")
    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[signer.public], topic_root="tin/v1")))
    base = {"uplink": {"batch_max_age_s": 0.05}, "topic_root": "tin/v1"}
    settings = load_settings(
        profile=profile,
        device_id="tv-inproc",
        broker="mqtt://127.0.0.1:9",  # never dialled: the transport is fake
        data_dir=tmp_path / "data",
        api_port=None,
        trust=trust,
        overrides={**base, **(overrides or {})},
        environ={},
    )
    transports = FakeTransports()
    async with Agent(settings, transport=transports, timer=timer) as agent:
        yield Device(agent, transports, signer)
