"""The local API has owners: app tokens with scopes, the admin token file, and no way in for
a web page (foreign `Host`, foreign `Origin`, non-JSON bodies)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.api.owners import (
    SCOPES,
    Owners,
    admin_token_path,
    audit_log,
    create_token,
    revoke_token,
)
from agent.cli import main as agent_cli
from tests.support.local_device import SURFACE, Client, Device, api_client

SIGNAL = {"signals": [{"kind": "search", "attrs": {"category": "groceries", "query_len": 3}}]}
CALLS: dict[str, tuple[str, str, Any]] = {
    "signals": ("POST", "/v1/signals", SIGNAL),
    "offers": ("GET", f"/v1/offers?surface={SURFACE}", None),
    "outcomes": ("POST", "/v1/outcomes", {"offer_id": "o-1", "kind": "click", "surface": SURFACE}),
    "claims": ("GET", "/v1/claims/nope", None),
    "consent": ("PUT", "/v1/consent", {"purposes": {"analytics": True}}),
    "status": ("GET", "/v1/status", None),
}
"""One route per scope (an answer other than 401/403 shows the caller got through)."""


async def _client(device: Device, token: str | None, **extra: str) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = await api_client(device, {**headers, **extra})
    await client.start_server()
    return client


async def _new_token(device: Device, app: str, scopes: str) -> str:
    return await asyncio.to_thread(create_token, device.agent.settings.data_dir, app, scopes)


async def test_the_agent_writes_an_admin_token_readable_only_by_its_owner(device: Device) -> None:
    path = admin_token_path(device.agent.settings.data_dir)
    assert path == device.agent.settings.data_dir / "tokens" / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) > 40
    log = await asyncio.to_thread(audit_log, device.agent.settings.data_dir)
    assert [(e["action"], e["app"], e["who"]) for e in log] == [("token.create", "admin", "agent")]


@pytest.mark.parametrize("scope", SCOPES)
async def test_each_scope_opens_its_routes_and_no_other(device: Device, scope: str) -> None:
    token = await _new_token(device, f"app-{scope}", scope)
    client = await _client(device, token)
    try:
        for route_scope, (method, path, body) in CALLS.items():
            response = await client.request(method, path, json=body)
            answer = await response.json()
            if route_scope == scope:
                assert response.status not in (401, 403), (scope, path, answer)
            else:
                assert response.status == 403, (scope, path, answer)
                assert answer["errors"][0]["loc"] == "Authorization"
                assert repr(route_scope) in answer["errors"][0]["msg"]
        # every valid token reads consent
        assert (await client.get("/v1/consent")).status == 200
    finally:
        await client.close()


async def test_consent_does_not_change_without_the_consent_scope(device: Device) -> None:
    before = device.agent.consent.to_json()
    token = await _new_token(device, "game", "signals,offers,outcomes,claims,status")
    client = await _client(device, token)
    try:
        withdrawn = {"purposes": dict.fromkeys(("analytics", "personalization", "marketing"), 1)}
        response = await client.put("/v1/consent", json={"purposes": {"analytics": True}})
        assert response.status == 403
        assert "'consent'" in (await response.json())["errors"][0]["msg"]
        assert (await client.put("/v1/consent", json=withdrawn)).status == 403
    finally:
        await client.close()
    assert device.agent.consent.to_json() == before
    assert device.agent.counters["api_forbidden"] == 2


async def test_unknown_callers_get_401_and_are_counted(device: Device) -> None:
    for token in (None, "emt_not-a-token", "x" * 5000):
        client = await _client(device, token)
        try:
            response = await client.post("/v1/signals", json=SIGNAL)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await client.get("/v1/status")).status == 401
            assert (await client.get("/healthz")).status == 200  # probes stay open
        finally:
            await client.close()
    assert device.agent.counters["api_unauthorized"] == 6
    assert device.agent.counters["signals_accepted"] == 0


async def test_a_cross_origin_form_post_is_refused_and_stores_nothing(
    device: Device, client: Client
) -> None:
    """Measured before: a page's `text/plain` POST got a 202; now refused, even with a token."""
    raw = b'{"signals":[{"kind":"search"}]}'
    plain = {"Content-Type": "text/plain"}
    evil = {"Origin": "https://evil.example", "Content-Type": "application/json"}
    response = await client.post("/v1/signals", data=raw, headers=evil)
    assert response.status == 403
    assert (await response.json())["errors"][0]["loc"] == "Origin"
    response = await client.post("/v1/signals", data=raw, headers=plain)
    assert response.status == 415
    assert (await response.json())["errors"][0]["loc"] == "Content-Type"
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert (await client.get("/v1/status", headers=cross)).status == 403
    local = {"Origin": "http://localhost:3000"}  # a page served on the device itself
    assert (await client.post("/v1/signals", json=SIGNAL, headers=local)).status == 202
    counters = device.agent.counters
    assert counters["signals_accepted"] == 1
    assert counters["api_foreign_origin"] == 2
    assert counters["api_unsupported_media"] == 1


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8731", "192.168.1.20:8731"])
async def test_a_foreign_host_cannot_read_the_status(device: Device, host: str) -> None:
    """DNS rebinding: a page's name resolved to 127.0.0.1 still says its own `Host`."""
    admin = await asyncio.to_thread(admin_token_path(device.agent.settings.data_dir).read_text)
    client = await _client(device, admin.strip(), Host=host)
    try:
        response = await client.get("/v1/status")
        assert response.status == 403
        assert (await response.json())["errors"][0]["loc"] == "Host"
        assert (await client.get("/healthz")).status == 403
    finally:
        await client.close()
    for ok in ("127.0.0.1:1", "localhost", "[::1]:8731"):
        client = await _client(device, admin.strip(), Host=ok)
        try:
            assert (await client.get("/v1/status")).status == 200, ok
        finally:
            await client.close()


async def test_a_token_works_at_once_and_a_revoked_one_is_refused(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Owners, "RECHECK_S", 0.0)  # the 1 s re-read, without waiting for it
    token = await _new_token(device, "launcher", "signals")
    client = await _client(device, token)
    try:
        assert (await client.post("/v1/signals", json=SIGNAL)).status == 202
        data_dir = device.agent.settings.data_dir
        assert await asyncio.to_thread(revoke_token, data_dir, "launcher")
        assert (await client.post("/v1/signals", json=SIGNAL)).status == 401
    finally:
        await client.close()


def test_the_cli_makes_tokens_and_names_a_wrong_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    args = ["token", "create", "--data-dir", str(data), "--app", "tv-launcher"]
    assert agent_cli([*args, "--scopes", "signals,offers"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("emt_")
    assert "tv-launcher" in (data / "tokens" / "apps.json").read_text()
    assert token not in (data / "tokens" / "apps.json").read_text()  # kept hashed
    assert stat.S_IMODE((data / "tokens" / "apps.json").stat().st_mode) == 0o600
    assert agent_cli([*args, "--scopes", "signals,erase"]) == 2
    assert "unknown scope 'erase'" in capsys.readouterr().err
    assert agent_cli(["token", "list", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out == "tv-launcher\toffers,signals\n"
    revoke = ["token", "revoke", "--data-dir", str(data), "--app"]
    assert agent_cli([*revoke, "tv-launcher"]) == 0
    assert agent_cli([*revoke, "tv-launcher"]) == 1
    changes = [(e["action"], e["app"]) for e in audit_log(data)]
    assert changes == [("token.create", "tv-launcher"), ("token.revoke", "tv-launcher")]
    assert all(e["who"].startswith("cli") and e["at"] for e in audit_log(data))
