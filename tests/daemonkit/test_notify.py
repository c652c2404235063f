"""systemd's notify protocol with the standard library: READY=1 reaches the socket systemd
names, and the watchdog is pinged only while every supervised loop runs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemonkit.notify import Notifier, feed_watchdog
from daemonkit.supervisor import Supervisor


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """The datagram socket systemd would listen on (`NOTIFY_SOCKET`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    yield sock
    sock.close()


def test_from_env_reads_the_socket_and_the_watchdog_interval(tmp_path: Path) -> None:
    assert Notifier.from_env({}) is None
    plain = Notifier.from_env({"NOTIFY_SOCKET": "/run/x"})
    assert plain is not None and plain.ping_every_s is None
    timed = Notifier.from_env({"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "30000000"})
    assert timed is not None and timed.watchdog_s == 30.0 and timed.ping_every_s == 15.0
    other = Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
    assert other is not None and other.watchdog_s is None  # the watchdog is another process's


def test_ready_reaches_systemd(systemd_socket: socket.socket) -> None:
    notifier = Notifier(systemd_socket.getsockname())
    assert notifier.ready("serving as tv-0001")
    assert systemd_socket.recv(256) == b"READY=1\nSTATUS=serving as tv-0001"
    assert not Notifier("/nonexistent/notify").ready()  # outside systemd: False, no error


async def test_a_dead_loop_stops_the_watchdog_pings(systemd_socket: socket.socket) -> None:
    systemd_socket.setblocking(False)
    notifier = Notifier(systemd_socket.getsockname(), watchdog_s=0.1)
    loops = Supervisor("test", first_delay=60.0)
    healthy = asyncio.Event()

    async def works() -> None:
        await asyncio.Event().wait()

    async def dies() -> None:
        await healthy.wait()
        raise RuntimeError("a bug")

    loops.start("works", works)
    loops.start("dies", dies)
    feeder = asyncio.create_task(feed_watchdog(notifier, loops.down), name="watchdog")

    def pings() -> int:
        n = 0
        while True:
            try:
                assert systemd_socket.recv(64) == b"WATCHDOG=1"
            except BlockingIOError:
                return n
            n += 1

    try:
        await asyncio.sleep(0.35)
        assert pings() >= 3  # every loop runs: pinged every 0.05 s
        healthy.set()  # "dies" raises and waits a minute to restart
        await asyncio.sleep(0.05)
        assert loops.down() == ["dies"]
        pings()
        await asyncio.sleep(0.35)
        assert pings() == 0
    finally:
        feeder.cancel()
        await loops.close()
