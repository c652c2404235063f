"""Claim credentials on both backends: a batch makes at most its size of devices even when
they all ask at once, a device id once, a CSR only for its own id; refusals are audited."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.provisioning.flow import make_request
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.open import open_session
from cloud_gateway.db.provisioning import revoke_batch
from cloud_gateway.errors import ClaimRefused, InvalidInput
from cloud_gateway.provisioning.ca import load_or_create
from cloud_gateway.provisioning.service import Provisioner, create_batch

T = TypeVar("T")


@pytest.fixture
async def provisioner(
    tmp_path: Path, make_backend: Callable[[], Backend[Session]]
) -> AsyncIterator[Provisioner]:
    backend = await make_backend().open()
    trust = tmp_path / "trust.json"
    trust.write_text('{"v": 1, "keys": [], "topic_root": "edgemart/v1"}')
    try:
        yield Provisioner(backend, tmp_path / "gw", trust, "edgemart/v1", Counter())
    finally:
        await backend.close()


def _in_store(tmp_path: Path, db: str | None, work: Callable[[Session], T]) -> T:
    """`work` on a session of the test's database, opened and closed on this thread."""
    store = open_session(tmp_path / "gw", db)
    try:
        return work(store)
    finally:
        store.close()


async def _batch(tmp_path: Path, db: str | None, size: int) -> str:
    return await asyncio.to_thread(
        _in_store, tmp_path, db, lambda s: create_batch(s, "b-1", size, "factory")
    )


async def test_a_batch_makes_at_most_its_size_even_all_at_once(
    provisioner: Provisioner, tmp_path: Path, gateway_db: str | None
) -> None:
    claim = await _batch(tmp_path, gateway_db, 5)
    requests = [await asyncio.to_thread(make_request, f"tv-b1-{i:04d}") for i in range(12)]

    async def one(i: int) -> str | None:
        try:
            await provisioner.provision(claim, f"tv-b1-{i:04d}", requests[i][1])
        except ClaimRefused as exc:
            return exc.reason
        return None

    results = await asyncio.gather(*(one(i) for i in range(12)))
    assert results.count(None) == 5
    assert all("used up" in r for r in results if r is not None)
    rows = await asyncio.to_thread(_in_store, tmp_path, gateway_db, audit_log)
    assert Counter(r["action"] for r in rows)["provision.refused"] == 7


async def test_a_device_id_once_and_only_with_its_own_csr(
    provisioner: Provisioner, tmp_path: Path, gateway_db: str | None
) -> None:
    claim = await _batch(tmp_path, gateway_db, 10)
    _, csr = await asyncio.to_thread(make_request, "tv-one-0001")
    issued = await provisioner.provision(claim, "tv-one-0001", csr)
    cert = x509.load_pem_x509_certificate(issued.certificate.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tv-one-0001"
    ca = await asyncio.to_thread(load_or_create, provisioner._data_dir)
    cert.verify_directly_issued_by(ca.cert)
    with pytest.raises(ClaimRefused, match="already provisioned"):
        await provisioner.provision(claim, "tv-one-0001", csr)
    with pytest.raises(InvalidInput, match="common name"):
        await provisioner.provision(claim, "tv-two-0002", csr)  # someone else's CSR
    with pytest.raises(InvalidInput, match="not a PEM"):
        await provisioner.provision(claim, "tv-two-0002", "-----BEGIN nothing")
    _, own = await asyncio.to_thread(make_request, "tv-two-0002")
    with pytest.raises(ClaimRefused) as refused:
        await provisioner.provision("emc_wrong", "tv-two-0002", own)
    assert not refused.value.known


async def test_a_revoked_claim_provisions_nothing_more(
    provisioner: Provisioner, tmp_path: Path, gateway_db: str | None
) -> None:
    claim = await _batch(tmp_path, gateway_db, 10)
    _, csr = await asyncio.to_thread(make_request, "tv-rv-0001")
    await provisioner.provision(claim, "tv-rv-0001", csr)
    assert await asyncio.to_thread(
        _in_store, tmp_path, gateway_db, lambda s: revoke_batch(s, "b-1", "ops")
    )
    _, csr = await asyncio.to_thread(make_request, "tv-rv-0002")
    with pytest.raises(ClaimRefused, match="revoked") as refused:
        await provisioner.provision(claim, "tv-rv-0002", csr)
    assert not refused.value.known  # 401, like an unknown claim
