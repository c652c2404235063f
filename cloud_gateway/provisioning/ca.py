"""The fleet CA the gateway holds: it signs each device's X.509 client certificate (CN = the
device id, what Mosquitto's `use_identity_as_username` makes the username) and the CRL.

Files under `DATA_DIR/fleet-ca/`: `ca.pem` (the certificate brokers and devices trust),
`ca.key` (mode 0600), `crl.pem` (what the broker's `crlfile` reads). Blocking file I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_gateway.errors import GatewayError, InvalidInput
from daemonkit.files import write_durable
from protocol.ids import utcnow

CA_DIR = "fleet-ca"
DEVICE_CERT_LIFE = timedelta(days=3650)
"""Devices serve for years; revocation (the CRL), not expiry, ends a device's identity."""
CA_LIFE = timedelta(days=7300)
MAX_CSR_BYTES = 8192


class CaError(GatewayError):
    """The fleet CA's files cannot be read or written."""


@dataclass(frozen=True, slots=True)
class FleetCa:
    """The CA's key and certificate (loaded), and where its files are."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    folder: Path

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def crl_path(self) -> Path:
        return self.folder / "crl.pem"

    def issue(
        self, device_id: str, public_key: ec.EllipticCurvePublicKey, now: datetime | None = None
    ) -> x509.Certificate:
        """A client certificate for `device_id` over the device's own public key."""
        start = (now or utcnow()) - timedelta(minutes=5)  # a device clock a little behind
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + DEVICE_CERT_LIFE)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_server(self, host: str) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a broker answering at `host` (a name or an IP)."""
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            alt = x509.DNSName(host)
        now = utcnow() - timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def write_crl(self, revoked: Iterable[tuple[int, datetime]]) -> Path:
        """Write `crl.pem` listing `(serial, revoked_at)`; the broker reads it on (re)start."""
        now = utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + timedelta(days=30))
        )
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        write_durable(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path


def parse_csr(pem: str, device_id: str) -> ec.EllipticCurvePublicKey:
    """The public key of a device's CSR, checked: well formed, self-signed by that key, CN
    equal to `device_id`, an EC P-256 key. Anything else is an `InvalidInput` naming it."""
    if len(pem) > MAX_CSR_BYTES:
        raise InvalidInput(f"csr is over {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise InvalidInput(f"csr is not a PEM certificate request: {exc}") from exc
    try:
        ok = csr.is_signature_valid
    except InvalidSignature:  # pragma: no cover - is_signature_valid answers False
        ok = False
    if not ok:
        raise InvalidInput("csr is not signed by its own key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != device_id:
        raise InvalidInput(f"csr's common name must be the device id {device_id!r}")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InvalidInput("csr's key must be EC P-256")
    return key


def load_or_create(data_dir: Path) -> FleetCa:
    """The fleet CA of `data_dir`, created (key 0600, self-signed certificate) if missing."""
    folder = data_dir / CA_DIR
    key_path, cert_path = folder / "ca.key", folder / "ca.pem"
    try:
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CaError(f"{key_path}: not an EC private key")
            return FleetCa(key, cert, folder)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgemart fleet CA")])
        now = utcnow() - timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + CA_LIFE)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_durable(key_path, key_pem, mode=0o600)
        write_durable(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        ca = FleetCa(key, cert, folder)
        ca.write_crl([])  # the broker's crlfile must exist from the start
        return ca
    except (OSError, ValueError) as exc:
        raise CaError(f"fleet CA in {folder}: {exc}") from exc
