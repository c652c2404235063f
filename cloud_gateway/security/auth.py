"""Operator bearer tokens: random secrets of which only the sha256 is stored, each with
scopes (roles), an optional expiry, and revocation."""

from __future__ import annotations

import getpass
import hashlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cloud_gateway.db import tokens as rows
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.tokens import add_token, token_id_for_hash
from cloud_gateway.errors import InvalidInput
from protocol.ids import utcnow

DB_NAME = "gateway.db"
MAX_TOKEN_LEN = 512
MAX_CACHED = 1024
SCOPES = ("read-only", "campaigns", "models", "devices", "admin")
"""read-only: every GET but a device's export; campaigns: create, launch, pause, stop;
models: register and roll out; devices: erase, forget, export a device's data; admin: all."""
READ_ONLY = "read-only"
ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Grant:
    """A valid token as the API sees it: its public id and what it may do."""

    id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """`admin` may do everything; any scope may read (`read-only`)."""
        return ADMIN in self.scopes or scope in self.scopes or scope == READ_ONLY


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    """`campaigns,models` (or a list) -> scopes in a fixed order; an unknown one is named."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    wanted = {s for s in items if s}
    unknown = sorted(wanted - set(SCOPES))
    known = ", ".join(SCOPES)
    if unknown:
        raise InvalidInput(f"unknown scope {unknown[0]!r} (known: {known})")
    if not wanted:
        raise InvalidInput(f"no scope given (known: {known})")
    return tuple(s for s in SCOPES if s in wanted)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id(digest: str) -> str:
    """The public name of a token (for audit and logs): a prefix of its hash."""
    return digest[:12]


def operator() -> str:
    """Who runs the CLI: `cli:<login name>` (or `cli` when the system cannot tell)."""
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (OSError, KeyError):
        return "cli"


def create_token(
    data_dir: Path,
    who: str | None = None,
    *,
    db: str | None = None,
    scopes: str | Iterable[str] = (ADMIN,),
    expires_in: timedelta | None = None,
    name: str | None = None,
) -> str:
    """Create a bearer token for `data_dir`'s gateway; usable at once by a running gateway.

    The token (its hash, scopes, expiry) and the audit row saying who created it (`who`,
    default the CLI's user) commit together. Blocking (opens the database): for CLIs and
    threads.
    """
    wanted = parse_scopes(scopes)
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidInput(f"the expiry must be a positive duration, not {expires_in}")
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    digest = token_hash(token)
    expires_at = utcnow() + expires_in if expires_in is not None else None
    store = _open(data_dir, db)
    try:
        add_token(
            store,
            token_id(digest),
            digest,
            who or operator(),
            scopes=wanted,
            expires_at=expires_at,
            name=name,
        )
    finally:
        store.close()
    return token


def revoke_token(
    data_dir: Path, token: str, who: str | None = None, *, db: str | None = None
) -> bool:
    """Revoke a token given by its id (`token list`) or the token itself; audited. Running
    gateways refuse it within their cache's TTL (5 s). Blocking."""
    ident = token if len(token) == 12 else token_id(token_hash(token))
    store = _open(data_dir, db)
    try:
        return rows.revoke(store, ident, who or operator())
    finally:
        store.close()


def list_tokens(data_dir: Path, *, db: str | None = None) -> list[dict[str, Any]]:
    """Every token's id, name, scopes and life (never a secret or a hash). Blocking."""
    store = _open(data_dir, db)
    try:
        return rows.list_tokens(store)
    finally:
        store.close()


def _open(data_dir: Path, db: str | None) -> Session:
    from cloud_gateway.db.open import open_session  # noqa: PLC0415 - open imports config

    return open_session(data_dir, db)


def verify(store: Session, token: str) -> str | None:
    """The token's id if `token` is a live token of this store, else None."""
    if not token or len(token) > MAX_TOKEN_LEN:
        return None
    return token_id_for_hash(store, token_hash(token))


class TokenVerifier:
    """Checks bearer tokens against the database, caching answers for a short TTL.

    Tokens created or revoked by another process (`edgemart gateway token create|revoke`)
    are seen once the cached answer for them has expired, within `ttl` seconds; an expired
    token is refused at once (its end of life is cached with it).
    """

    def __init__(
        self,
        db: Backend[Session],
        ttl: float = 5.0,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._ttl = ttl
        self._wall = wall
        self._cache: dict[str, tuple[float, rows.TokenRow | None]] = {}

    async def verify(self, token: str) -> Grant | None:
        if not token or len(token) > MAX_TOKEN_LEN:
            return None
        digest = token_hash(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            found = hit[1]
        else:
            found = await self._db.call(rows.token_for_hash, digest)
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            # Unknown tokens are cached briefly too, so a flood of bad ones costs little.
            self._cache[digest] = (now + self._ttl, found)
        if found is None or (found.expires_at is not None and found.expires_at <= self._wall()):
            return None
        return Grant(found.id, found.scopes)
