"""Provisioning with a real Mosquitto speaking mutual TLS: a fresh agent holding only its
factory claim credential ends connected as itself, cannot publish on another device's
topics, and once revoked is refused at its next connect (CRL); a claim used again for a
device id or past its batch is refused and audited."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from pydantic import SecretStr

from agent.config import load_settings
from agent.household.membership import credentials, load_key, read_membership
from agent.offers.book import load_trust
from agent.provisioning.flow import identity_files, make_request
from agent.runtime.agent import Agent
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.audit import audit_log
from cloud_gateway.provisioning.service import create_batch
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol.ids import new_id
from protocol.signing import Verifier
from tests.support.mtls import ROOT, MtlsFleet, mtls_fleet
from tests.support.processes import spawn, stop, tail
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[MtlsFleet]:
    with mtls_fleet(tmp_path) as started:
        yield started


def _tls(data_dir: Path) -> aiomqtt.TLSParameters:
    cert, key, ca = identity_files(data_dir)
    return aiomqtt.TLSParameters(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))


async def _connects(fleet: MtlsFleet, data_dir: Path, client_id: str) -> bool:
    """Whether the broker takes a connection with this device's certificate."""
    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            fleet.broker.port,
            identifier=client_id,
            tls_params=_tls(data_dir),
            timeout=5,
        ):
            return True
    except (aiomqtt.MqttError, ssl.SSLError, OSError):
        return False


async def _refused(fleet: MtlsFleet, data_dir: Path) -> bool:
    return not await _connects(fleet, data_dir, f"probe-{new_id()[:8]}")


async def _provision(
    base: str, claim: str, device_id: str, household: dict[str, str] | None = None
) -> tuple[int, Any]:
    _, csr = await asyncio.to_thread(make_request, device_id)
    body: dict[str, Any] = {"device_id": device_id, "csr": csr}
    if household is not None:
        body["household"] = household
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/v1/provision",
            json=body,
            headers={"Authorization": f"Claim {claim}"},
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_a_fresh_agent_with_only_its_claim_ends_connected_as_itself_until_revoked(
    tmp_path: Path, fleet: MtlsFleet
) -> None:
    claim = await asyncio.to_thread(
        fleet.store, lambda s: create_batch(s, "b-2026-12", 3, "factory")
    )
    settings = GatewaySettings(
        broker=fleet.gateway_url,
        data_dir=fleet.gw_dir,
        http_port=0,
        ack_delay_ms=2,
        mqtt_username="gateway",
        mqtt_password=SecretStr(fleet.gateway_password),
    )
    async with Gateway(settings) as gw:
        assert gw.link_connected
        base = f"http://127.0.0.1:{gw.http_port}"
        claim_file = tmp_path / "claim"
        claim_file.write_text(claim + "\n")
        # The owner's app invites the new TV into its household; the TV redeems it as it
        # provisions itself (issue 17).
        owner = await asyncio.to_thread(create_token, fleet.gw_dir, scopes="devices")
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {owner}"}) as http,
            http.post(f"{base}/v1/households/hh-prov/invites", json={"roles": ["member"]}) as r,
        ):
            assert r.status == 201, await r.text()
            invite = (await r.json())["invite"]
        invite_file = tmp_path / "invite"
        invite_file.write_text(invite + "\n")
        dev_dir = tmp_path / "tv"
        agent_settings = load_settings(
            profile="tv",
            device_id="tv-prov-0001",
            broker=fleet.url,
            data_dir=dev_dir,
            trust=tmp_path / "tv-trust.json",  # not there yet: provisioning brings it
            overrides={
                "uplink": {"batch_max_age_s": 0.05, "mode": "raw"},
                "claim_file": str(claim_file),
                "provision_url": base,
                "household_invite_file": str(invite_file),
            },
            environ={},
        )
        async with Agent(agent_settings) as agent:
            assert await agent.wait_connected(20)
            assert agent.settings.mqtt_cert_file is not None
            await agent.set_consent(
                {"analytics": True, "personalization": False, "marketing": False}
            )
            await agent.accept_signals([{"kind": "app_open", "attrs": {"app": "provisioned"}}])
            assert await agent.drain(15)
        assert gw.counters["signals_stored"] == 1
        key = identity_files(dev_dir)[1]
        assert key.stat().st_mode & 0o077 == 0  # the device's key: its own, private
        grant = read_membership(dev_dir)
        assert grant is not None
        trust = load_trust(agent_settings.trust)
        creds = credentials(grant, load_key(dev_dir), Verifier.from_public_keys(trust.keys))
        assert creds.membership.household_id == "hh-prov"
        assert creds.membership.device_id == "tv-prov-0001"

        # With its certificate it cannot speak for another device: the gateway never hears it.
        heard: list[str] = []
        async with aiomqtt.Client(
            "127.0.0.1",
            int(fleet.gateway_url.rsplit(":", 1)[1]),
            username="gateway",
            password=fleet.gateway_password,
            identifier="spy",
        ) as spy:
            await spy.subscribe(f"{ROOT}/dev/+/up/#", qos=1)

            async def listen() -> None:
                async for message in spy.messages:
                    heard.append(str(message.topic))

            listener = asyncio.create_task(listen())
            async with aiomqtt.Client(
                "127.0.0.1",
                fleet.broker.port,
                identifier="tv-prov-0001-x",
                tls_params=_tls(dev_dir),
            ) as device:
                await device.publish(f"{ROOT}/dev/tv-other-0002/up/batch", b"{}", qos=1)
                await device.publish(f"{ROOT}/dev/tv-prov-0001/up/test", b"{}", qos=1)
            await eventually(lambda: f"{ROOT}/dev/tv-prov-0001/up/test" in heard, 10)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        assert f"{ROOT}/dev/tv-other-0002/up/batch" not in heard

        # The claim again for the same device, or past the batch's size: refused, audited.
        status, body = await _provision(base, claim, "tv-prov-0001")
        assert status == 409 and "already provisioned" in body["detail"], body
        # The invite is spent: another device provisioned with it gets its identity, not
        # the household.
        other_key = await asyncio.to_thread(load_key, tmp_path / "other")
        status, body = await _provision(
            base,
            claim,
            "tv-prov-0002",
            {"invite": invite, "device_key": other_key.public.public_key},
        )
        assert status == 201 and body["household_refused"] == "household invite already used"
        assert "household" not in body
        assert gw.counters["household_invites_refused"] == 1
        assert (await _provision(base, claim, "tv-prov-0003"))[0] == 201
        status, body = await _provision(base, claim, "tv-prov-0004")
        assert status == 409 and "used up" in body["detail"], body
        assert (await _provision(base, "emc_forged", "tv-prov-0005"))[0] == 401
        rows = await asyncio.to_thread(fleet.store, audit_log)
        refused = [r for r in rows if r["action"] == "provision.refused"]
        assert len(refused) == 2 and all(r["target"] == "batch:b-2026-12" for r in refused)
        assert sum(r["action"] == "provision.issue" for r in rows) == 3

        # Revoked: refused at its next connect, by the same running broker: the command
        # installs the new CRL where the broker reads it and makes it reload (SIGHUP).
        assert await _connects(fleet, dev_dir, "probe-1")
        work = fleet.broker.workdir
        pid = int((work / "mosquitto.pid").read_text())
        done = await asyncio.to_thread(
            subprocess.run,
            [
                *(sys.executable, "-m", "edgemart", "gateway", "provision", "revoke"),
                *("--data-dir", str(fleet.gw_dir), "--device", "tv-prov-0001"),
                *("--crl-out", str(work / "crl.pem")),
                *("--broker-pid-file", str(work / "mosquitto.pid")),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"broker {pid} reloaded" in done.stdout
        assert (work / "crl.pem").read_bytes() == (
            fleet.gw_dir / "fleet-ca" / "crl.pem"
        ).read_bytes()
        await eventually(lambda: _refused(fleet, dev_dir), 10, "the revoked device refused")
        assert int((work / "mosquitto.pid").read_text()) == pid  # not restarted
        assert gw.link_connected  # the gateway's own session lived through the reload
        async with Agent(agent_settings) as again:  # the device itself, from its data dir
            await asyncio.sleep(2)
            assert not again.link.connected.is_set()
        rows = await asyncio.to_thread(fleet.store, audit_log)
        assert any(r["action"] == "provision.revoke" and r["who"].startswith("cli") for r in rows)


async def test_edgemart_agent_run_with_a_claim_provisions_itself_and_reports_over_mtls(
    tmp_path: Path, fleet: MtlsFleet
) -> None:
    """The same flow from the command line: `--claim FILE --provision-url URL` only."""
    claim = await asyncio.to_thread(fleet.store, lambda s: create_batch(s, "b-cli", 1, "factory"))
    claim_file = tmp_path / "claim"
    claim_file.write_text(claim)
    settings = GatewaySettings(
        broker=fleet.gateway_url,
        data_dir=fleet.gw_dir,
        http_port=0,
        mqtt_username="gateway",
        mqtt_password=SecretStr(fleet.gateway_password),
    )
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, fleet.gw_dir, scopes="read-only")
        log = tmp_path / "agent.log"
        agent = spawn(
            [
                *("agent", "run", "--profile", "tv", "--device-id", "tv-cli-0001"),
                *("--broker", fleet.url, "--data-dir", str(tmp_path / "dev")),
                *("--api-port", "none", "--trust", str(tmp_path / "trust.json")),
                *(
                    "--claim",
                    str(claim_file),
                    "--provision-url",
                    f"http://127.0.0.1:{gw.http_port}",
                ),
                "-v",
            ],
            log,
        )
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

                async def registered() -> bool:
                    assert agent.poll() is None, tail(log)
                    url = f"http://127.0.0.1:{gw.http_port}/v1/devices/tv-cli-0001"
                    async with http.get(url) as resp:
                        return resp.status == 200 and (await resp.json())["status"] == "online"

                await eventually(registered, 30, "the provisioned agent's birth at the gateway")
        finally:
            assert stop(agent) == 0, tail(log)
    assert (tmp_path / "trust.json").exists()
    assert claim not in tail(log, 100_000)  # the claim credential is never logged
