"""Broker passwords for devices on brokers that cannot do mutual TLS, made by the gateway,
never by hand: a random password per device, kept as Mosquitto's own hash (`$7$`: PBKDF2-
SHA512), and the broker's `password_file` written from the database."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path

from daemonkit.files import write_durable

ITERATIONS = 101
"""What `mosquitto_passwd` 2.0 uses for `$7$` hashes."""


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """`$7$101$<salt>$<hash>`, as `mosquitto_passwd` writes it (Mosquitto 2.0 checks it)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    b64 = base64.b64encode
    return f"$7${ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def write_password_file(
    path: Path, entries: Iterable[tuple[str, str]], keep: Iterable[str] = ("gateway",)
) -> None:
    """Write `password_file` (0600, blocking): a `device:hash` line per device of `entries`
    (the database's), and the existing lines of the users in `keep` (the gateway's own, made
    with `mosquitto_passwd`). Any other line goes: a revoked device's is gone. The broker reads
    the file when it starts or reloads (SIGHUP)."""
    kept_users = set(keep)
    lines: list[str] = []
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.split(":", 1)[0] in kept_users]
    lines += [
        f"{device}:{digest}" for device, digest in sorted(entries) if device not in kept_users
    ]
    write_durable(path, ("\n".join(lines) + "\n").encode(), mode=0o600)
