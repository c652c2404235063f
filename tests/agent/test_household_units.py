"""The household's pure parts and the coordinator's API edges: hostile TXT records yield no
advert (never an exception), the election is deterministic, and the LAN API refuses strangers,
malformed bodies and appliances reading context, counting each."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.household import handshake
from agent.household.coordinator import MAX_BODY, CoordinatorServer
from agent.household.discovery import parse_advert
from agent.household.election import Candidate, elect
from agent.household.membership import Credentials
from agent.http.client import Answer, HttpClient
from protocol.signing import Signer, Verifier
from tests.support.household import member


@given(
    st.dictionaries(
        st.binary(max_size=8),
        st.one_of(st.none(), st.binary(max_size=300)),
        max_size=8,
    ),
    st.lists(st.text(max_size=20), max_size=2),
    st.one_of(st.none(), st.integers(min_value=-1, max_value=70000)),
)
def test_hostile_txt_records_yield_no_advert_and_never_raise(
    props: dict[bytes, bytes | None], addresses: list[str], port: int | None
) -> None:
    advert = parse_advert("x._edgemart._tcp.local.", props, addresses, port)
    if advert is not None:
        assert advert.role in ("hub", "member", "thin", "appliance")
        assert len(advert.fingerprint) == 32


def test_a_well_formed_advert_parses() -> None:
    props = {b"v": b"1", b"role": b"hub", b"hh": b"ab" * 8, b"fp": b"0f" * 16, b"proof": b"c" * 32}
    advert = parse_advert("n", props, ["127.0.0.1"], 8080)
    assert advert is not None and advert.role == "hub" and advert.port == 8080
    assert parse_advert("n", {**props, b"v": b"2"}, ["127.0.0.1"], 8080) is None
    assert parse_advert("n", {**props, b"fp": b"XYZ"}, ["127.0.0.1"], 8080) is None


def test_election_hub_first_then_lowest_member_never_thin() -> None:
    a = Candidate("a" * 32, "member", "h", 1)
    b = Candidate("b" * 32, "member", "h", 2)
    hub = Candidate("f" * 32, "hub", "h", 3)
    thin = Candidate("0" * 32, "thin", "h", 4)
    assert elect([b, a, thin]) == a
    assert elect([b, hub, a, thin]) == hub
    assert elect([thin, Candidate("1" * 32, "appliance", "h", 5)]) is None
    assert elect([a, b]) == elect([b, a])


async def test_the_lan_api_refuses_strangers_bad_bodies_and_reading_appliances(
    tmp_path: Path,
) -> None:
    gateway = Signer.generate("k1")
    secret = secrets.token_bytes(32)
    hub = await asyncio.to_thread(member, gateway, "hh-u", "hub-1", ["hub"], tmp_path / "h", secret)
    fridge = await asyncio.to_thread(
        member, gateway, "hh-u", "fridge-1", ["appliance"], tmp_path / "f", secret
    )
    server = CoordinatorServer(hub, Verifier.from_public_keys([gateway.public]))
    port = await server.start("127.0.0.1", 0)
    http = HttpClient()
    try:
        await _refusals(server, _Peer(http, f"http://127.0.0.1:{port}"), hub, fridge)
    finally:
        await http.close()
        await server.stop()


class _Peer:
    """A device on the LAN, as the coordinator sees it: requests over a real socket."""

    def __init__(self, http: HttpClient, base: str) -> None:
        self.http = http
        self.base = base

    async def post(self, path: str, **kw: Any) -> Answer:
        return await self.http.request("POST", self.base + path, **kw)

    async def put(self, path: str, **kw: Any) -> Answer:
        return await self.http.request("PUT", self.base + path, **kw)

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.http.request("GET", self.base + path, **kw)


async def _refusals(
    server: CoordinatorServer, client: _Peer, hub: Credentials, fridge: Credentials
) -> None:
    assert (await client.post("/lan/v1/hello", json={"nonce": "x" * 32})).status == 409
    server.serve(True)
    assert (await client.get("/lan/v1/context")).status == 401
    bad = await client.post("/lan/v1/hello", json={"nonce": "short"})
    assert bad.status == 400 and "nonce" in bad.text()
    assert server.counters["household_bad_requests"] == 1
    over = {"nonce": "x" * (MAX_BODY + 1)}
    assert (await client.post("/lan/v1/hello", json=over)).status == 413

    async def session(creds: Credentials) -> str:
        nonce_c = handshake.new_nonce()
        hello = (await client.post("/lan/v1/hello", json={"nonce": nonce_c})).json()
        assert "household_secret" not in hello["membership"]
        proof = handshake.prove(creds.key, "client", hello["nonce"], nonce_c, hub.fingerprint)
        body = {"membership": creds.wire, "nonce": hello["nonce"], "proof": proof}
        answer = await client.post("/lan/v1/auth", json=body)
        assert answer.status == 200
        replay = await client.post("/lan/v1/auth", json=body)
        assert replay.status == 401  # a hello is good once
        token: str = answer.json()["token"]
        return token

    token = await session(fridge)
    headers = {"Authorization": f"Bearer {token}"}
    levels = await client.put(
        "/lan/v1/consumables", json={"levels": {"fridge_filter": 0.7}}, headers=headers
    )
    assert levels.status == 200
    assert (await client.get("/lan/v1/context", headers=headers)).status == 403
    assert server.state.snapshot(0.0).consumable_need == {"fridge_filter": 0.7}
    huge = {"levels": {f"c{i}": 0.5 for i in range(17)}}
    assert (await client.put("/lan/v1/consumables", json=huge, headers=headers)).status == 400
    stolen = {"membership": fridge.wire, "nonce": "y" * 32, "proof": "AAAA"}
    assert (await client.post("/lan/v1/auth", json=stolen)).status == 401
    assert server.counters["household_auth_refused"] >= 3
