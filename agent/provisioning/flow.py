"""The provisioning flow an agent runs on its first start: make a key pair on the device,
send a CSR with the factory claim credential to the gateway, keep the certificate it gets.

Files under `DATA_DIR/identity/`: `device.key` (0600, never leaves the device),
`device.pem` (its client certificate), `ca.pem` (the fleet CA: verifies the broker). The
trust file from the gateway is written to `--trust` when that file does not exist yet. With a
household invite (`--household-invite`), the request carries it and the device's LAN key, and
the signed membership that comes back is kept in `DATA_DIR/household/membership.json`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from agent.config import AgentSettings
from agent.errors import ConfigError, ProvisioningRefused
from daemonkit.files import write_durable
from mqttlink.backoff import Backoff

log = logging.getLogger(__name__)
IDENTITY_DIR = "identity"


def identity_files(data_dir: Path) -> tuple[Path, Path, Path]:
    """(certificate, key, CA) of a provisioned device."""
    folder = data_dir / IDENTITY_DIR
    return folder / "device.pem", folder / "device.key", folder / "ca.pem"


def with_identity(settings: AgentSettings) -> AgentSettings:
    """`settings` connecting with the device's certificate over mutual TLS."""
    cert, key, ca = identity_files(settings.data_dir)
    return settings.model_copy(
        update={"mqtt_cert_file": cert, "mqtt_key_file": key, "mqtt_ca_file": ca, "mqtt_tls": True}
    )


def make_request(device_id: str) -> tuple[bytes, str]:
    """(private key PEM, CSR PEM) for `device_id`: an EC P-256 key made here."""
    # imported here: x509 is ~2 MB of a process that needs it once, at its first start
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def _has_identity(data_dir: Path) -> bool:
    return all(p.exists() for p in identity_files(data_dir))


def _household_request(settings: AgentSettings) -> dict[str, str] | None:
    """The `household` of the provisioning request: the invite and this device's LAN key
    (made now, kept in its data dir), or None (no invite given, or a membership held)."""
    if settings.household_invite_file is None:
        return None
    # imported here: only a device joining a household at its first start needs them
    from agent.household.membership import load_key, read_membership  # noqa: PLC0415

    if read_membership(settings.data_dir) is not None:
        return None
    try:
        invite = settings.household_invite_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the household invite: {exc}", field="household_invite_file"
        ) from exc
    key = load_key(settings.data_dir)
    return {"invite": invite, "device_key": key.public.public_key}


def _keep(settings: AgentSettings, key_pem: bytes, answer: dict[str, Any]) -> None:
    cert, key, ca = identity_files(settings.data_dir)
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_durable(key, key_pem, mode=0o600)
    write_durable(ca, str(answer["ca"]).encode())
    if not settings.trust.exists():
        write_durable(settings.trust, json.dumps(answer["trust"]).encode())
    grant = answer.get("household")
    if isinstance(grant, dict):
        from agent.household.membership import write_membership  # noqa: PLC0415

        write_membership(settings.data_dir, grant)
    elif "household_refused" in answer:
        log.warning(
            "device %s is provisioned but did not join a household: %s",
            settings.device_id,
            answer["household_refused"],
        )
    write_durable(cert, str(answer["certificate"]).encode())  # last: its presence says done


async def ensure_identity(settings: AgentSettings, *, max_wait_s: float = 30.0) -> AgentSettings:
    """The settings to run with: with the device's certificate once it has one, after
    provisioning it now if a claim credential and a provisioning URL are given."""
    if await asyncio.to_thread(_has_identity, settings.data_dir):
        return with_identity(settings)
    if settings.claim_file is None or settings.provision_url is None:
        return settings
    try:
        claim = (await asyncio.to_thread(settings.claim_file.read_text)).strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the claim credential: {exc}", field="claim_file") from exc
    key_pem, csr = await asyncio.to_thread(make_request, settings.device_id)
    url = settings.provision_url.rstrip("/") + "/v1/provision"
    body: dict[str, Any] = {"device_id": settings.device_id, "csr": csr}
    household = await asyncio.to_thread(_household_request, settings)
    if household is not None:
        body["household"] = household
    headers = {"Authorization": f"Claim {claim}"}
    import aiohttp  # noqa: PLC0415 - lazy: once in a device's life, 13 MB of imports

    backoff = Backoff(initial=0.2, cap=max_wait_s)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            try:
                async with http.post(url, json=body, headers=headers) as resp:
                    answer = await resp.json(content_type=None)
                    if resp.status == 201:
                        break
                    detail = answer.get("detail", "") if isinstance(answer, dict) else ""
                    if resp.status in (400, 401, 409):
                        raise ProvisioningRefused(resp.status, str(detail))
                    log.warning("provisioning at %s answered %d: %s", url, resp.status, detail)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("provisioning at %s failed: %s; retrying", url, exc)
            await asyncio.sleep(backoff.next())
    await asyncio.to_thread(_keep, settings, key_pem, answer)
    log.info("device %s provisioned: its certificate is in %s", settings.device_id, IDENTITY_DIR)
    return with_identity(settings)
