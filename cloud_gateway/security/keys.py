"""The gateway's Ed25519 signing key on disk, the trust file devices pin, and the key list."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cloud_gateway.errors import KeyStoreError
from daemonkit.files import write_durable
from protocol.envelopes import KeyList, TrustFile
from protocol.errors import SignatureError
from protocol.ids import new_id, utcnow
from protocol.signing import Signer

log = logging.getLogger(__name__)

KEY_LIST_TTL = timedelta(days=365)
TRUST_FILE = "trust.json"
KEYS_DIR = "keys"


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    signer: Signer
    trust_path: Path


def new_kid() -> str:
    """`gw-` plus the time-ordered head of a UUIDv7: later keys sort after earlier ones."""
    return "gw-" + new_id().replace("-", "")[:20]


def load_or_create(data_dir: Path, topic_root: str) -> KeyMaterial:
    """Reload the newest key in `DATA_DIR/keys/`, or create one; (re)write `trust.json`.

    Blocking file I/O: call it from a thread, not the event loop.
    """
    keys_dir = data_dir / KEYS_DIR
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
