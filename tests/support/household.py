"""Household members for tests: memberships signed by a gateway key the way
`POST /v1/households/{id}/members` signs them, and clients on the loopback LAN."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from agent.household.client import HouseholdClient
from agent.household.membership import Credentials, credentials, load_key
from protocol.household import MemberRole
from protocol.signing import Signer, Verifier
from simulators.household_lan import membership


def member(
    gateway: Signer,
    household_id: str,
    device_id: str,
    roles: Sequence[MemberRole],
    data_dir: Path,
    secret: bytes,
) -> Credentials:
    """A device's credentials: its LAN key made in `data_dir`, its membership signed."""
    key = load_key(data_dir)
    wire = membership(gateway, household_id, device_id, key, roles, secret)
    return credentials(wire, key, Verifier.from_public_keys([gateway.public]))


@contextlib.asynccontextmanager
async def clients(
    creds: Sequence[Credentials],
    gateway: Signer,
    *,
    tick_s: float = 0.2,
    ttl_s: int = 120,
    consent: dict[str, bool] | None = None,
) -> AsyncIterator[list[HouseholdClient]]:
    """Every device of `creds` on the loopback LAN (real mDNS), started together; `consent`:
    device id -> personalization (True when absent), read at each round."""
    verifier = Verifier.from_public_keys([gateway.public])
    consent = consent if consent is not None else {}
    made = [
        HouseholdClient(
            c,
            verifier,
            tick_s=tick_s,
            ttl_s=ttl_s,
            personalization=functools.partial(_allowed, consent, c.membership.device_id),
        )
        for c in creds
    ]
    started: list[HouseholdClient] = []
    try:
        for client, result in zip(
            made,
            await asyncio.gather(*(c.start() for c in made), return_exceptions=True),
            strict=True,
        ):
            if isinstance(result, BaseException):
                raise result
            started.append(client)
        yield made
    finally:
        await asyncio.gather(*(c.close() for c in made), return_exceptions=True)


def _allowed(consent: dict[str, bool], device_id: str) -> bool:
    return consent.get(device_id, True)
