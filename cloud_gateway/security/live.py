"""The gateway's keys while it runs (issue 14): the signer every part signs with, switched
in place when `edgemart keys ...` changes `DATA_DIR/keys/`, with no restart.

`LiveKeys` is the one `SigningKey` the parts hold: `sign` always uses the key material last
loaded. `watch` re-reads the ring and the list every interval (the files' bytes, not their
times) and, when they changed, loads them, switches, and hands the change to the gateway
(which publishes the new list, a timestamp, the catalogs signed again and, after a
revocation, the device bundles the revoked key signed). Every worker of a fleet watches its
own data directory, so each switches on its own within one interval of its files changing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_gateway.errors import GatewayError
from cloud_gateway.security import keys_ring
from cloud_gateway.security.keys import KeyMaterial, load_or_create
from protocol.envelopes import PublicKey

log = logging.getLogger(__name__)

WATCHED = (keys_ring.KEYRING, keys_ring.KEYLIST)


@dataclass(frozen=True, slots=True)
class KeyChange:
    """What a reload changed: the signing key and list version before and after, and the
    kids revoked by the new list that the old one did not revoke."""

    old_kid: str
    new_kid: str
    old_version: int
    new_version: int
    revoked: frozenset[str]


def fingerprint(data_dir: Path) -> str:
    """A digest of the watched files' bytes (a missing file counts as empty)."""
    digest = hashlib.sha256()
    for name in WATCHED:
        path = keys_ring.keys_dir(data_dir) / name
        with contextlib.suppress(FileNotFoundError):
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def revoked_of(material: KeyMaterial) -> frozenset[str]:
    listed = material.key_list.get("revoked") if material.key_list else None
    return frozenset(k for k in listed or () if isinstance(k, str))


def _consistent(data_dir: Path, material: KeyMaterial) -> bool:
    """Whether the ring and the list were written by the same change (same version)."""
    ring = keys_ring.read_ring(data_dir)
    return ring is None or material.key_list is None or ring.version == material.keys_version


class LiveKeys:
    """The key material the gateway signs with now, switched by `reload`."""

    def __init__(
        self, data_dir: Path, topic_root: str, material: KeyMaterial, seen: str = ""
    ) -> None:
        """`seen`: the fingerprint of the files `material` was loaded from ("": unknown, the
        first `reload` reads them again and reports a change only if there is one)."""
        self._data_dir = data_dir
        self._topic_root = topic_root
        self._material = material
        self._seen = seen

    @classmethod
    def load(cls, data_dir: Path, topic_root: str) -> LiveKeys:
        """Load (or create) the keys: blocking file I/O, call it from a thread."""
        seen = fingerprint(data_dir)  # before loading: a change meanwhile is seen later
        return cls(data_dir, topic_root, load_or_create(data_dir, topic_root), seen)

    @property
    def material(self) -> KeyMaterial:
        return self._material

    @property
    def kid(self) -> str:
        return self._material.signer.kid

    @property
    def public(self) -> PublicKey:
        return self._material.signer.public

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._material.signer.sign(obj)

    @property
    def trust_path(self) -> Path:
        return self._material.trust_path

    @property
    def keys_version(self) -> int:
        return self._material.keys_version

    @property
    def revoked(self) -> frozenset[str]:
        return revoked_of(self._material)

    def published_key_list(self) -> dict[str, Any]:
        return self._material.published_key_list()

    def reload(self) -> KeyChange | None:
        """Load the files again if their bytes changed; None when they did not (blocking).
        Raises GatewayError (KeyStoreError) when they cannot be loaded: the old key stays."""
        seen = fingerprint(self._data_dir)
        if seen == self._seen:
            return None
        material = load_or_create(self._data_dir, self._topic_root, write_trust=False)
        if fingerprint(self._data_dir) != seen or not _consistent(self._data_dir, material):
            return None  # `edgemart keys` is writing them: the next interval reads them whole
        old = self._material
        self._material, self._seen = material, seen
        change = KeyChange(
            old_kid=old.signer.kid,
            new_kid=material.signer.kid,
            old_version=old.keys_version,
            new_version=material.keys_version,
            revoked=revoked_of(material) - revoked_of(old),
        )
        if (change.old_kid, change.old_version) == (change.new_kid, change.new_version):
            return None  # the same key and list (files rewritten with the same content)
        return change

    async def watch(
        self,
        interval_s: float,
        on_change: Callable[[KeyChange], Awaitable[None]],
        counters: Counter[str] | None = None,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Every `interval_s`, run `before` (the shared ring's sync, `security/shared.py`),
        reload and hand a change to `on_change` (a gateway loop)."""
        failed_at: str | None = None
        synced = True
        while True:
            await asyncio.sleep(interval_s)
            if before is not None:
                try:
                    await before()
                    synced = True
                except GatewayError as exc:  # the database: its next interval tries again
                    if synced:
                        log.warning("shared key ring not read: %s", exc)
                    synced = False
            try:
                change = await asyncio.to_thread(self.reload)
            except GatewayError as exc:
                seen = await asyncio.to_thread(fingerprint, self._data_dir)
                if seen != failed_at:  # once per state of the files, not every interval
                    failed_at = seen
                    log.error(  # noqa: TRY400 - the reason is the message
                        "keys not reloaded, still signing with %s: %s", self.kid, exc
                    )
                    if counters is not None:
                        counters["keys_reload_failed"] += 1
                continue
            failed_at = None
            if change is None:
                continue
            log.warning(
                "keys reloaded: signing with %s (was %s), key list version %d (was %d)%s",
                change.new_kid,
                change.old_kid,
                change.new_version,
                change.old_version,
                f", revoked {sorted(change.revoked)}" if change.revoked else "",
            )
            if counters is not None:
                counters["keys_reloaded"] += 1
            await on_change(change)
