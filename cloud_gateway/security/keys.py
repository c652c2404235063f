"""The gateway's Ed25519 signing key on disk, the trust file devices pin, and the key list."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cloud_gateway.errors import KeyStoreError
from protocol.envelopes import KeyList, TrustFile
from protocol.errors import SignatureError
from protocol.ids import new_id, utcnow
from protocol.signing import Signer

log = logging.getLogger(__name__)

KEY_LIST_TTL = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    signer: Signer
    trust_path: Path


def new_kid() -> str:
    """`gw-` plus the time-ordered head of a UUIDv7: later keys sort after earlier ones."""
    return "gw-" + new_id().replace("-", "")[:20]


def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only (0600), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_or_create(data_dir: Path, topic_root: str) -> KeyMaterial:
    """Reload the newest key in `DATA_DIR/keys/`, or create one; (re)write `trust.json`.

    Blocking file I/O: call it from a thread, not the event loop.
    """
    keys_dir = data_dir / "keys"
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
            _write_private(path, signer.to_pem())
            log.info("created signing key %s in %s", signer.kid, path)
        trust = TrustFile(keys=[signer.public], topic_root=topic_root)
        trust_path = data_dir / "trust.json"
        text = json.dumps(trust.to_wire(), indent=2) + "\n"
        if not trust_path.exists() or trust_path.read_text(encoding="utf-8") != text:
            _write_atomic(trust_path, text)
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
