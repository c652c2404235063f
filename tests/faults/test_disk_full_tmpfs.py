"""A full disk for real: the agent's data directory on a tiny tmpfs (ENOSPC from the kernel,
not a simulation). Why a tmpfs: it is the file system error itself, for the database, its WAL
and shared memory, and for the reserve file alike; `PRAGMA max_page_count` (the fast tier's
`tests/agent/test_disk_full.py`) limits only the database file, and RLIMIT_FSIZE gives EFBIG,
another error. Mounting needs root: the test is skipped, saying so, where it cannot mount.

The effective quota is bounded by the free space at start; filled by another writer, the disk
answers 507 with the free space, readiness says `disk: full`, stored batches still go out and
acks apply; stopped and started again on the full disk, the agent runs (its reserve released
for the open); with room again it takes data and holds its reserve again."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol import codec
from tests.support.local_device import Client, Device, api_client, running_device
from tests.support.waiting import eventually

DISK_BYTES = 8 * 1024 * 1024
SIGNAL: dict[str, Any] = {"kind": "search", "attrs": {"category": "games", "pad": "p" * 250}}
ALL = {"analytics": True, "personalization": True, "marketing": True}


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "data"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> int:
    """Write `path` until the file system says ENOSPC; the bytes written."""
    written = 0
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                written += os.write(fd, bytes(4096))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
    finally:
        os.close(fd)


async def post(client: Client, n: int = 20) -> tuple[int, Any, Any]:
    response = await client.post("/v1/signals", json={"signals": [SIGNAL] * n})
    return response.status, await response.json(), response.headers


async def test_a_full_tmpfs_is_a_state_and_the_agent_restarts_on_it(
    tmp_path: Path, tiny_disk: Path
) -> None:
    profile_quota = 16 * 1024 * 1024  # the tv profile's, twice this disk
    async with running_device(tmp_path) as device:
        client = await _client(device)
        try:
            store = device.agent.store
            status = await (await client.get("/v1/status")).json()
            assert status["disk"]["quota_bytes"] < min(profile_quota, DISK_BYTES)
            assert status["disk"]["reserve_held"] is True
            await device.agent.set_consent(ALL)
            assert (await post(client))[0] == 202
            await asyncio.to_thread(fill, tiny_disk / "other-writer.log")
            for _ in range(200):
                code, body, headers = await post(client)
                if code != 202:
                    break
            assert code == 507, body
            assert headers["Retry-After"] and body["free_bytes"] >= 0
            assert (await client.get("/readyz")).status == 503
            assert (await (await client.get("/readyz")).json())["disk"] == "full"
            # the link is back: what the outbox holds goes out, and its acks apply
            transport = device.transports.last
            held = store.depth
            transport.up()
            await eventually(lambda: _seqs(device) != [], timeout=10)
            await transport.deliver("ack", device.ack(_seqs(device)))
            await eventually(lambda: store.depth < held, timeout=5)
            assert device.agent.parts.loops.down() == []
        finally:
            await client.close()
    # stopped; started again on the (still) full disk
    await asyncio.to_thread(fill, tiny_disk / "other-writer-2.log")
    async with running_device(tmp_path) as device:
        client = await _client(device)
        try:
            ready = await (await client.get("/readyz")).json()
            assert ready["disk"] == "full" and ready["store"] is True
            assert (await post(client, 1))[0] == 507
            for name in ("other-writer.log", "other-writer-2.log"):
                await asyncio.to_thread((tiny_disk / name).unlink)
            store = device.agent.store
            await store.call(store.recheck_space)
            assert (await post(client, 1))[0] == 202
            assert (await (await client.get("/v1/status")).json())["disk"]["reserve_held"]
        finally:
            await client.close()


async def _client(device: Device) -> Client:
    client = await api_client(device)
    await client.start_server()
    return client


def _seqs(device: Device) -> list[int]:
    return sorted(
        {
            codec.decode_object(p, allow_zlib=True)["seq"]
            for t, p, _ in device.transports.last.published
            if t.endswith("/batch")
        }
    )
