"""The blocking-call guard: a blocking call made on a running event loop's thread fails the
test, as python-zeroconf's tests do it (with `blockbuster`, which wraps `time.sleep`, file,
socket, SSL and SQLite calls, locks and `input`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from blockbuster import BlockBuster, BlockingError, blockbuster_ctx

__all__ = ["ALLOWED", "BlockingError", "no_blocking_calls_on_the_loop"]

# A blocking call is reported when a frame of our packages is on its stack: our code must not
# block the loop. A test's own check (reading a file or a database to assert on it) is not.
SCANNED = ["agent", "cloud_gateway", "mqttlink", "protocol", "models", "simulators"]

# Known blocking calls on the loop, let through until their owners fix them: any blocking
# call whose stack passes through (file, one of these functions), and where it is reported.
ALLOWED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("agent/store/core.py", ("close",), "report H3, B1: Store.close joins its executor"),
    ("cloud_gateway/db/store.py", ("close",), "report H3, B2: Database.close joins its executor"),
    (
        "cloud_gateway/config.py",
        ("mqtt_client_id",),
        "report H3, B3: the gateway's client id resolves data_dir on the loop",
    ),
    (
        "agent/config.py",
        ("load_settings",),
        "report H3, B4: async test fixtures call the sync config loader (the daemons do not)",
    ),
    (
        "tests/gateway/test_gateway_ingest_batching.py",
        ("count",),
        "the test's own check, from another connection, as each ack goes out: on purpose",
    ),
)


@contextmanager
def no_blocking_calls_on_the_loop() -> Iterator[BlockBuster]:
    """While inside, a blocking call of our code on the thread of a running event loop raises
    `BlockingError`; calls outside a running loop (sync tests, store threads) are untouched."""
    with blockbuster_ctx(SCANNED) as guard:
        for filename, functions, _where in ALLOWED:
            for function in guard.functions.values():
                function.can_block_in(filename, functions)
        yield guard
