"""The file descriptors a fleet run needs, and the process's limit raised to them (or a
refusal up front with the arithmetic, instead of a traceback at device 237 of 1,000)."""

from __future__ import annotations

import resource

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
