"""Household memberships on both backends: the gateway signs what a device's LAN handshake
then accepts, renews a member in place, keeps one secret per household, and audits it."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.household.membership import MembershipError, check_membership, credentials, load_key
from cloud_gateway.api.app import SCOPE_OF, openapi_json
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.households import members
from cloud_gateway.errors import InviteRefused
from cloud_gateway.households.service import HouseholdDesk, InviteIn, JoinIn, MemberIn
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


async def test_an_invite_is_spent_once_for_a_membership_its_peers_accept(
    tmp_path: Path, make_backend: Callable[[], Backend[Session]]
) -> None:
    signer = Signer.generate("k1")
    now = [utcnow()]
    counters: Counter[str] = Counter()
    backend = await make_backend().open()
    try:
        desk = HouseholdDesk(backend, signer, lambda: now[0], counters)
        invite = await desk.invite("hh-7", InviteIn(roles=["member"], ttl_hours=2), "token:owner")
        assert invite["household_id"] == "hh-7" and len(invite["invite"]) >= 32
        key = await asyncio.to_thread(load_key, tmp_path / "tv")
        spec = JoinIn(invite=invite["invite"], device_key=key.public.public_key)
        grant = await desk.join("tv-9", spec)
        creds = credentials(grant, key, Verifier.from_public_keys([signer.public]))
        assert creds.membership.household_id == "hh-7" and creds.membership.roles == ["member"]
        # the same device asking again (its answer lost) gets its membership again ...
        assert (await desk.join("tv-9", spec))["household_secret"] == grant["household_secret"]
        # ... another device with the same code gets nothing
        other = await asyncio.to_thread(load_key, tmp_path / "phone")
        with pytest.raises(InviteRefused, match="already used"):
            await desk.join(
                "phone-1", JoinIn(invite=invite["invite"], device_key=other.public.public_key)
            )
        with pytest.raises(InviteRefused, match="unknown"):
            await desk.join("phone-1", JoinIn(invite="x" * 32, device_key=other.public.public_key))
        late = await desk.invite("hh-7", InviteIn(roles=["thin"], ttl_hours=1), "token:owner")
        now[0] += timedelta(hours=1, seconds=1)
        with pytest.raises(InviteRefused, match="expired"):
            await desk.join(
                "phone-1", JoinIn(invite=late["invite"], device_key=other.public.public_key)
            )
        assert counters["household_invites_refused"] == 3
        assert counters["household_invites_redeemed"] == 2
        rows = await backend.call(members, "hh-7")
        assert [r["device_id"] for r in rows] == ["tv-9"]
        actions = [e["action"] for e in await backend.call(audit_log)]
        assert actions.count("household.invite") == 2
        # what the gateway keeps of a code is its hash
        kept = await backend.call(lambda s: s.rows("SELECT code_hash FROM household_invites"))
        assert invite["invite"] not in {r["code_hash"] for r in kept}
    finally:
        await backend.close()


def test_a_device_key_that_is_not_an_ed25519_key_is_refused_naming_the_field() -> None:
    for bad in ("!" * 44, base64.b64encode(b"k" * 31).decode()):
        with pytest.raises(ValidationError, match="device_key"):
            JoinIn(invite="c" * 32, device_key=bad)
        with pytest.raises(ValidationError, match="device_key"):
            MemberIn(device_id="tv-1", device_key=bad, roles=["member"])
    assert SCOPE_OF[("POST", "/v1/households/{id}/invites")] == "devices"
