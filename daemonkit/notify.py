"""systemd's readiness and watchdog protocol (`sd_notify`), with the standard library only.

Under `Type=notify` systemd passes `NOTIFY_SOCKET` (a datagram socket, `@` for the abstract
namespace) and, with `WatchdogSec=`, `WATCHDOG_USEC`. `Notifier.from_env()` is None outside
systemd, so a daemon calls it unconditionally.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Notifier:
    """Sends `READY=1`, `WATCHDOG=1`, `STOPPING=1` and `STATUS=...` to systemd."""

    address: str
    watchdog_s: float | None = None
    """systemd's watchdog interval in seconds (`WATCHDOG_USEC`); None: no watchdog."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier | None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        watchdog: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        return cls(address, watchdog)

    @property
    def ping_every_s(self) -> float | None:
        """How often to send `WATCHDOG=1`: half the interval, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def send(self, *fields: str) -> bool:
        """Send `fields` (e.g. `"READY=1"`) in one datagram; False when systemd is not there.
        Non-blocking: a datagram to a local socket either goes at once or fails."""
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(fields).encode(), target)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *((f"STATUS={status}",) if status else ()))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")


async def feed_watchdog(
    notifier: Notifier,
    down: Callable[[], list[str]],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Send `WATCHDOG=1` every `notifier.ping_every_s` while `down()` (the supervisor's loops
    not running now) is empty; forever, until cancelled. A loop that stays dead, or an event
    loop that stops turning, stops the pings, and systemd restarts the service after
    `WatchdogSec=`. Without a watchdog interval it returns at once."""
    every = notifier.ping_every_s
    if every is None:
        return
    silent = False
    while True:
        dead = down()
        if dead:
            if not silent:
                log.warning("watchdog: not pinging systemd while loops are down: %s", dead)
            silent = True
        else:
            if silent:
                log.warning("watchdog: every loop runs again; pinging systemd")
            silent = False
            notifier.watchdog()
        await sleep(every)
