"""The gateway API has roles: tokens with scopes, expiry and revocation, stored hashed and
audited; the dashboard works with a read-only token (both database backends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_gateway.cli import main as gateway_cli
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.backend import Session
from cloud_gateway.db.open import open_backend, open_session
from cloud_gateway.db.tokens import add_token
from cloud_gateway.errors import InvalidInput
from cloud_gateway.runtime.build import Parts, build
from cloud_gateway.security.auth import create_token, revoke_token, token_hash, token_id
from cloud_gateway.security.keys import load_or_create
from protocol.ids import utcnow

Client = TestClient[Any, Any]
T = TypeVar("T")
CAMPAIGN = {"name": "x", "cohorts": ["profile:tv"], "offers": []}
WRITES: dict[str, tuple[str, str, Any]] = {
    "campaigns": ("POST", "/v1/campaigns/c-none/launch", None),
    "models": ("POST", "/v1/models/99/rollout", {"percent": 10, "cohort": "all"}),
    "devices": ("DELETE", "/v1/devices/tv-none", None),
}
"""A write per scope: an answer other than 401/403 (here 404 or 400) shows it got through."""


@pytest.fixture
async def parts(tmp_path: Path, gateway_db: str | None) -> AsyncIterator[Parts]:
    """The gateway's parts over this test's database; no broker, no loop runs."""
    settings = GatewaySettings(
        broker="mqtt://127.0.0.1:9", data_dir=tmp_path / "gw", http_port=0, db=gateway_db
    )
    keys = await asyncio.to_thread(load_or_create, settings.data_dir, settings.topic_root)
    backend = await open_backend(settings, utcnow).open()
    try:
        yield build(settings, clock=utcnow, backend=backend, keys=keys)
    finally:
        await backend.close()


@pytest.fixture
async def client(parts: Parts) -> AsyncIterator[Client]:
    async with TestClient(TestServer(parts.http.app)) as http:
        yield http


async def _token(parts: Parts, scopes: str, **kw: Any) -> str:
    settings = parts.settings
    return await asyncio.to_thread(
        create_token, settings.data_dir, "test", db=settings.db, scopes=scopes, **kw
    )


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("scope", ["read-only", "campaigns", "models", "devices", "admin"])
async def test_each_scope_opens_its_writes_and_every_token_reads(
    parts: Parts, client: Client, scope: str
) -> None:
    token = await _token(parts, scope)
    for write_scope, (method, path, body) in WRITES.items():
        resp = await client.request(method, path, json=body, headers=_auth(token))
        answer = await resp.json()
        if scope in (write_scope, "admin"):
            assert resp.status not in (401, 403), (scope, path, answer)
        else:
            assert resp.status == 403, (scope, path, answer)
            assert repr(write_scope) in answer["detail"]
    export = await client.get("/v1/devices/tv-none/export", headers=_auth(token))
    assert export.status == (404 if scope in ("devices", "admin") else 403)  # personal data
    for path in ("/v1/stats", "/v1/audit", "/v1/devices", "/v1/models"):
        assert (await client.get(path, headers=_auth(token))).status == 200, (scope, path)


async def test_the_dashboard_works_with_a_read_only_token(parts: Parts, client: Client) -> None:
    token = await _token(parts, "read-only", name="wallboard")
    admin = await _token(parts, "campaigns")
    created = await client.post(
        "/v1/campaigns",
        json={
            "name": "filters",
            "cohorts": ["profile:tv"],
            "offers": [
                {
                    "id": "o-1",
                    "type": "coupon",
                    "title": "Filter",
                    "category": "purifier_filter",
                    "price": 20.0,
                    "discount": 0.1,
                    "surfaces": ["tv_home_banner"],
                }
            ],
        },
        headers=_auth(admin),
    )
    assert created.status == 201, await created.text()
    cid = (await created.json())["id"]
    assert (await client.get("/")).status == 200
    # what the dashboard's pages read: the fleet, the campaigns, each campaign's stats and
    # trends, the models, the devices, the members
    reads = ("/v1/fleet", "/v1/campaigns", f"/v1/campaigns/{cid}/stats")
    social = (  # and the social commerce boxes (issue 19): groups, cuts, a cut's schedule, tiers
        f"/v1/social/groups?campaign={cid}",
        f"/v1/social/cuts?campaign={cid}",
        "/v1/social/cut-schedule?price=10&floor=5&helps=2",
        "/v1/members/tiers",
    )
    for path in (*reads, f"/v1/campaigns/{cid}/trends", "/v1/models", "/v1/devices", *social):
        resp = await client.get(path, headers=_auth(token))
        assert resp.status == 200, (path, await resp.text())
    # its launch button is refused, and says why
    resp = await client.post(f"/v1/campaigns/{cid}/launch", headers=_auth(token))
    assert resp.status == 403
    assert "'campaigns'" in (await resp.json())["detail"]
    assert parts.counters["api_forbidden"] == 1


def _in_store(parts: Parts, work: Callable[[Session], T]) -> T:
    """`work` on a session of the gateway's database, opened and closed on this thread."""
    store = open_session(parts.settings.data_dir, parts.settings.db)
    try:
        return work(store)
    finally:
        store.close()


async def test_an_expired_or_revoked_token_is_refused_and_every_change_is_audited(
    parts: Parts, client: Client
) -> None:
    now = utcnow()

    def seed(store: Session) -> None:
        for secret, end in (
            ("old-secret", now - timedelta(seconds=1)),
            ("new", now + timedelta(1)),
        ):
            digest = token_hash(secret)
            add_token(store, token_id(digest), digest, "ops", scopes=("admin",), expires_at=end)

    await asyncio.to_thread(_in_store, parts, seed)
    assert (await client.get("/v1/stats", headers=_auth("old-secret"))).status == 401
    assert (await client.get("/v1/stats", headers=_auth("new"))).status == 200
    token = await _token(parts, "read-only")
    settings = parts.settings
    assert await asyncio.to_thread(revoke_token, settings.data_dir, token, "ops", db=settings.db)
    assert not await asyncio.to_thread(revoke_token, settings.data_dir, token, db=settings.db)
    resp = await client.get("/v1/stats", headers=_auth(token))
    assert resp.status == 401
    assert parts.counters["api_unauthorized"] == 2
    rows = await asyncio.to_thread(_in_store, parts, audit_log)
    revoked = [r for r in rows if r["action"] == "token.revoke"]
    assert [(r["who"], r["target"]) for r in revoked] == [
        ("ops", f"token:{token_id(token_hash(token))}")
    ]
    assert sum(r["action"] == "token.create" for r in rows) == 3
    stored = await asyncio.to_thread(_in_store, parts, lambda s: s.rows("SELECT * FROM tokens"))
    flat = repr(stored)
    assert token not in flat and "old-secret" not in flat  # hashes only


async def test_a_token_scope_or_life_that_makes_no_sense_is_refused(parts: Parts) -> None:
    with pytest.raises(InvalidInput, match="unknown scope 'root'"):
        await _token(parts, "read-only,root")
    with pytest.raises(InvalidInput, match="positive"):
        await _token(parts, "admin", expires_in=timedelta(0))


def test_the_cli_creates_lists_and_revokes_tokens(
    parts: Parts, capsys: pytest.CaptureFixture[str]
) -> None:
    data, db = parts.settings.data_dir, parts.settings.db
    where = ["--data-dir", str(data), *(["--db", db] if db else [])]
    create = ["token", "create", *where]
    assert gateway_cli([*create, "--scopes", "read-only", "--expires-in", "30d"]) == 0
    token = capsys.readouterr().out.strip()
    assert gateway_cli([*create, "--scopes", "root"]) == 2
    assert "unknown scope 'root'" in capsys.readouterr().err
    assert gateway_cli(["token", "list", *where]) == 0
    listed = capsys.readouterr().out
    ident = token_id(token_hash(token))
    assert ident in listed and "read-only" in listed and "live" in listed
    assert gateway_cli(["token", "revoke", ident, *where]) == 0
    assert gateway_cli(["token", "revoke", ident, *where]) == 1
    assert gateway_cli(["token", "list", *where]) == 0
    assert "revoked" in capsys.readouterr().out
