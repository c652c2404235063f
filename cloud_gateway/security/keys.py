"""The gateway's Ed25519 signing key on disk, the trust file devices pin, and the key list.

With a key ring (`keys_ring`, issue 14) the gateway signs with the ring's active key and
publishes the list the offline root signed; without one, as before: its newest key, and a
list it signs itself."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_gateway.errors import KeyStoreError
from cloud_gateway.security import keys_ring
from daemonkit.files import write_durable
from protocol.envelopes import KeyList, TrustFile
from protocol.errors import SignatureError
from protocol.ids import utcnow
from protocol.signing import Signer

log = logging.getLogger(__name__)

KEY_LIST_TTL = keys_ring.KEY_LIST_TTL
TRUST_FILE = keys_ring.TRUST_FILE
KEYS_DIR = keys_ring.KEYS_DIR


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    signer: Signer
    trust_path: Path
    key_list: dict[str, Any] | None = None
    """The root-signed key list to publish on `keys`; None: a self-signed one (no root)."""

    @property
    def keys_version(self) -> int:
        version = self.key_list.get("version") if self.key_list else None
        return version if isinstance(version, int) and version >= 1 else 1

    def published_key_list(self) -> dict[str, Any]:
        """What goes retained on `keys`."""
        if self.key_list is not None:
            return self.key_list
        return signed_key_list(self.signer, 1)


new_kid = keys_ring.new_kid


def load_or_create(data_dir: Path, topic_root: str, *, write_trust: bool = True) -> KeyMaterial:
    """Reload the newest key in `DATA_DIR/keys/`, or create one; (re)write `trust.json`
    (with a key ring and `write_trust=False`, leave it: `edgemart keys` wrote it with the ring,
    and a running gateway reloading must not race it for the file).

    Blocking file I/O: call it from a thread, not the event loop.
    """
    keys_dir = data_dir / KEYS_DIR
    ring = keys_ring.read_ring(data_dir)
    if ring is not None:
        kid = ring.active()
        if kid is None:
            raise KeyStoreError(f"the key ring in {keys_dir} has no active key")
        signer = keys_ring.online_key(data_dir, kid)
        trust_path = data_dir / TRUST_FILE
        try:
            if write_trust:
                trust_path = keys_ring.write_trust(data_dir, ring, topic_root)
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot write the trust file in {data_dir}: {exc}") from exc
        log.info("signing with %s, key list version %d", kid, ring.version)
        return KeyMaterial(signer, trust_path, keys_ring.read_key_list(data_dir))
    try:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pems = sorted(keys_dir.glob("*.pem"))
        if pems:
            path = pems[-1]
            signer = Signer.from_pem(path.stem, path.read_bytes())
            log.info("loaded signing key %s from %s", signer.kid, path)
        else:
            signer = Signer.generate(new_kid())
            path = keys_dir / f"{signer.kid}.pem"
            write_durable(path, signer.to_pem(), mode=0o600)
            log.info("created signing key %s in %s", signer.kid, path)
        trust = TrustFile(keys=[signer.public], topic_root=topic_root)
        trust_path = data_dir / TRUST_FILE
        text = json.dumps(trust.to_wire(), indent=2) + "\n"
        if not trust_path.exists() or trust_path.read_text(encoding="utf-8") != text:
            write_durable(trust_path, text.encode())
    except (OSError, ValueError, SignatureError) as exc:
        raise KeyStoreError(f"cannot load or create the signing key in {keys_dir}: {exc}") from exc
    return KeyMaterial(signer, trust_path)


def signed_key_list(signer: Signer, version: int = 1) -> dict[str, Any]:
    """The signed `KeyList` retained on `keys`: the keys devices should trust now."""
    now = utcnow()
    key_list = KeyList(
        version=version, keys=[signer.public], issued_at=now, expires_at=now + KEY_LIST_TTL
    )
    return signer.sign(key_list.to_wire())
