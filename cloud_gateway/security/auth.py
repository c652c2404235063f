"""Operator bearer tokens: random secrets of which only the sha256 is stored."""

from __future__ import annotations

import getpass
import hashlib
import secrets
import time
from pathlib import Path

from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.tokens import add_token, token_id_for_hash

DB_NAME = "gateway.db"
MAX_TOKEN_LEN = 512
MAX_CACHED = 1024


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id(digest: str) -> str:
    """The public name of a token (for audit and logs): a prefix of its hash."""
    return digest[:12]


def _operator() -> str:
    """Who runs the CLI: `cli:<login name>` (or `cli` when the system cannot tell)."""
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (OSError, KeyError):
        return "cli"


def create_token(data_dir: Path, who: str | None = None, *, db: str | None = None) -> str:
    """Create a bearer token for `data_dir`'s gateway; usable at once by a running gateway.

    The token (its hash) and the audit row saying who created it (`who`, default the CLI's
    user) commit together. Blocking (opens the database): for CLIs and threads.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    digest = token_hash(token)
    from cloud_gateway.db.open import open_session  # noqa: PLC0415 - open imports config

    store = open_session(data_dir, db)
    try:
        add_token(store, token_id(digest), digest, who or _operator())
    finally:
        store.close()
    return token


def verify(store: Session, token: str) -> str | None:
    """The token's id if `token` is a live token of this store, else None."""
    if not token or len(token) > MAX_TOKEN_LEN:
        return None
    return token_id_for_hash(store, token_hash(token))


class TokenVerifier:
    """Checks bearer tokens against the database, caching answers for a short TTL.

    Tokens created by another process (`edgemart gateway token create`) are seen once the
    negative answer for them (if any) has expired, within `ttl` seconds.
    """

    def __init__(self, db: Backend[Session], ttl: float = 5.0) -> None:
        self._db = db
        self._ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def verify(self, token: str) -> str | None:
        if not token or len(token) > MAX_TOKEN_LEN:
            return None
        digest = token_hash(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self._db.call(token_id_for_hash, digest)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        # Unknown tokens are cached briefly too, so a flood of bad ones costs little.
        self._cache[digest] = (now + self._ttl, found)
        return found
