"""The file descriptors a fleet run needs, and the process's limit raised to them (or a
refusal up front with the arithmetic, instead of a traceback at device 237 of 1,000)."""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.options import FleetOptions

FDS_PER_DEVICE = 8
"""Issue 16 measured 4.3-4.8 per simulated agent at rest (its SQLite file, -wal and -shm, its
MQTT socket, a share of the households' HTTP sessions and listening sockets); a run with
faults opens more at moments (reconnecting sockets beside closing ones, the proxy's pairs,
pipes): 202 devices ran out of 1,266 at 5 each."""
FDS_PER_DEVICE_EMBEDDED = 1
"""With the embedded broker, the broker's end of each device's connection is ours too."""
FDS_BASE = 256
"""The gateway, its database and HTTP server, the pool, logs, the interpreter's own."""


def per_device(*, embedded_broker: bool) -> int:
    return FDS_PER_DEVICE + (FDS_PER_DEVICE_EMBEDDED if embedded_broker else 0)


def plan(devices: int, per: int, soft: int, hard: int) -> tuple[int | None, str | None]:
    """Pure: (the soft limit to set, or None when `soft` suffices; a refusal sentence when
    even the hard limit is too low, else None) for `devices` needing `per` files each. It
    sets the hard limit itself when there is one: the estimate is a floor, not a bound."""
    need = FDS_BASE + devices * per
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None, None
    if hard != resource.RLIM_INFINITY and hard < need:
        fit = max(0, (hard - FDS_BASE) // per)
        return None, (
            f"{devices:,} devices need about {need:,} open files ({FDS_BASE} + {per} per"
            f" device) but the hard limit is {hard:,} (ulimit -Hn): raise it, or run at most"
            f" {fit:,} devices here"
        )
    return (need if hard == resource.RLIM_INFINITY else hard), None


def ensure(devices: int, *, embedded_broker: bool) -> str | None:
    """Raise this process's soft limit on open files to what `devices` need (a Mosquitto it
    starts inherits it); None when done, else the refusal sentence."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, refusal = plan(devices, per_device(embedded_broker=embedded_broker), soft, hard)
    if new_soft is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return refusal


FDS_PER_DEVICE_PARENT = 2
"""In the fleet process, per device: the partition proxy's two sockets of its connection
(`partition`), or the embedded broker's end of it."""


def hard_limit() -> int:
    """This process's hard limit on open files (what a child may raise its soft limit to)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard


def workers_needed(options: FleetOptions) -> int:
    """Agent worker processes for `options`: `--procs`, else one per core, and at least as
    many as the hard limit needs (each worker raises its own soft limit for its share)."""
    wanted = options.procs or os.cpu_count() or 1
    hard = hard_limit()
    if options.procs is not None or hard == resource.RLIM_INFINITY:
        return wanted
    room = max(1, (hard - FDS_BASE) // FDS_PER_DEVICE)
    return max(wanted, -(-options.devices // room))


def parent_need(options: FleetOptions) -> int:
    """Open files the fleet process holds itself at most: its broker ends or proxy pairs."""
    per = FDS_PER_DEVICE_EMBEDDED if options.broker is None else 0
    if "partition" in options.faults:
        per += FDS_PER_DEVICE_PARENT
    return per


def ensure_fleet(options: FleetOptions, crash_devices: int) -> str | None:
    """The fleet process's own limit raised (its workers raise theirs), or the refusal:
    also when `--procs` packs more devices into one worker than the hard limit holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    devices = options.devices + crash_devices
    procs = workers_needed(options)
    share = -(-options.devices // procs)
    _, refusal = plan(share, FDS_PER_DEVICE, min(soft, 0), hard)
    if refusal is not None:
        return f"one of {procs} worker processes: {refusal} (or give --procs more)"
    if options.broker == "mosquitto":
        _, refusal = plan(devices, 1, 0, hard)
        if refusal is not None:
            return f"the private Mosquitto (a socket per device): {refusal}"
    per = parent_need(options)
    if per == 0:
        return None
    new_soft, refusal = plan(devices, per, soft, hard)
    if new_soft is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return refusal
