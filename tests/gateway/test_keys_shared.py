"""Every worker of a PostgreSQL fleet switches keys with no restart (issue 14): `edgemart
keys` run in one worker's data directory reaches the others through the shared record; a
worker that lacks the new key's file keeps its old key (counted) until the file is copied.
Two real gateways on one PostgreSQL and one Mosquitto, in this process."""

from __future__ import annotations

import asyncio
import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security import keys_ring
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_a_key_added_and_activated_in_one_worker_is_used_by_every_worker(
    mosquitto: MosquittoProcess, tmp_path: Path, postgres_url: str
) -> None:
    first = gateway_settings(tmp_path / "a", mosquitto, db=postgres_url, keys_watch_s=0.2)
    second = first.model_copy(
        update={"data_dir": tmp_path / "b" / "gw", "client_id": f"{first.client_id}-b"}
    )
    root = tmp_path / "operator" / "root.key"
    root.parent.mkdir()
    keys_ring.init(first.data_dir, root, first.topic_root)
    shutil.copytree(first.data_dir / "keys", second.data_dir / "keys")  # as docs/scale.md says
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Gateway(first))
        b = await stack.enter_async_context(Gateway(second))
        old = a.signer.kid
        assert b.signer.kid == old

        new = await asyncio.to_thread(keys_ring.add, first.data_dir, root)  # in a's dir only
        await eventually(lambda: a.parts.keys.keys_version == 2, 10)
        # b sees the shared ring but has no file for the new key: it keeps what it has
        await eventually(lambda: b.counters["keys_missing"] == 1, 10)
        assert b.parts.keys.keys_version == 1 and b.signer.kid == old
        shutil.copy2(first.data_dir / "keys" / f"{new}.pem", second.data_dir / "keys")
        await eventually(lambda: b.parts.keys.keys_version == 2, 10)

        await asyncio.to_thread(keys_ring.activate, first.data_dir, new)  # a's dir only
        await eventually(lambda: a.signer.kid == new and b.signer.kid == new, 10)
        ring = keys_ring.read_ring(second.data_dir)
        assert ring is not None and ring.active() == new  # b's own files now say so
        assert a.counters["keys_reload_failed"] == b.counters["keys_reload_failed"] == 0
        assert b.counters["keys_missing"] == 1
