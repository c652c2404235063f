"""Household memberships on both backends: the gateway signs what a device's LAN handshake
then accepts, renews a member in place, keeps one secret per household, and audits it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.household.membership import MembershipError, check_membership, credentials, load_key
from cloud_gateway.api.app import SCOPE_OF, openapi_json
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.households import members
from cloud_gateway.households.service import HouseholdDesk, MemberIn
from protocol.ids import utcnow
from protocol.signing import Signer, Verifier


async def test_members_get_credentials_their_peers_accept(
    tmp_path: Path, make_backend: Callable[[], Backend[Session]]
) -> None:
    signer = Signer.generate("k1")
    backend = await make_backend().open()
    try:
        desk = HouseholdDesk(backend, signer, utcnow)
        keys = [await asyncio.to_thread(load_key, tmp_path / f"d{i}") for i in range(2)]
        issued = [
            await desk.issue(
                "hh-42",
                MemberIn(device_id=f"tv-{i}", device_key=k.public.public_key, roles=["member"]),
                "token:ops",
            )
            for i, k in enumerate(keys)
        ]
        verifier = Verifier.from_public_keys([signer.public])
        creds = [credentials(w, k, verifier) for w, k in zip(issued, keys, strict=True)]
        assert creds[0].hint == creds[1].hint  # one secret per household
        assert creds[0].fingerprint != creds[1].fingerprint
        renewed = await desk.issue(
            "hh-42",
            MemberIn(device_id="tv-0", device_key=keys[0].public.public_key, roles=["hub"]),
            "token:ops",
        )
        assert check_membership(renewed["membership"], verifier).roles == ["hub"]
        rows = await backend.call(members, "hh-42")
        assert [r["device_id"] for r in rows] == ["tv-0", "tv-1"]
        entries = await backend.call(audit_log)
        assert sum(e["action"] == "household.member" for e in entries) == 3
        other = await desk.issue(
            "hh-43",
            MemberIn(device_id="tv-9", device_key=keys[1].public.public_key, roles=["member"]),
            "token:ops",
        )
        assert other["household_secret"] != issued[0]["household_secret"]
        assert "household_secret" not in issued[0]["membership"]  # what peers see has none
        with pytest.raises(MembershipError, match="another household"):
            check_membership(other["membership"], verifier, household_id="hh-42")
        with pytest.raises(MembershipError, match="another device key"):
            credentials(issued[0], keys[1], verifier)
        tampered = {**issued[0]["membership"], "roles": ["hub"]}
        with pytest.raises(MembershipError, match="does not verify"):
            check_membership(tampered, verifier)
        body = {k: v for k, v in issued[0]["membership"].items() if k != "sig"}
        forged = Signer.generate("k1").sign(body)
        with pytest.raises(MembershipError):
            check_membership(forged, verifier)
        assert len(base64.b64decode(issued[0]["household_secret"])) == 32
    finally:
        await backend.close()


def test_the_route_needs_the_devices_scope_and_is_documented() -> None:
    assert SCOPE_OF[("POST", "/v1/households/{id}/members")] == "devices"
    assert "/v1/households/{id}/members" in openapi_json()["paths"]
