"""Run one household member on the LAN, alone (no MQTT link): `python -m agent.household
--data-dir DIR --trust trust.json [--host 127.0.0.1]`. Its membership is
`DIR/household/membership.json`, its LAN key `DIR/household/lan.key`. Prints `ready <fp>`
once advertising; runs until SIGTERM/SIGINT. What simulators and fault tests start as a
process (a coordinator to SIGKILL)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from agent.household.client import HouseholdClient
from agent.household.membership import (
    MembershipError,
    credentials,
    load_key,
    read_membership,
)
from agent.offers.book import load_trust
from protocol.signing import Verifier


async def _run(data_dir: Path, trust: Path, host: str, tick_s: float) -> int:
    key = await asyncio.to_thread(load_key, data_dir)
    wire = await asyncio.to_thread(read_membership, data_dir)
    if wire is None:
        print(f"no membership in {data_dir}/household/membership.json", file=sys.stderr)
        return 2
    pinned = await asyncio.to_thread(load_trust, trust)
    verifier = Verifier.from_public_keys(pinned.keys)
    try:
        creds = credentials(wire, key, verifier)
    except MembershipError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with HouseholdClient(
        creds, verifier, host=host, interfaces=(host,), tick_s=tick_s, personalization=lambda: True
    ):
        print(f"ready {creds.fingerprint}", flush=True)
        await stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.household")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--trust", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tick", type=float, default=2.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(args.data_dir, args.trust, args.host, args.tick))
    return 130


if __name__ == "__main__":
    sys.exit(main())
