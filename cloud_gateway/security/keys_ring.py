"""The operator's key ring (issue 14): online keys with roles and a life, the key list signed
by the offline root, root rotation, and the audit of every change.

The root key is a file the operator keeps apart: these functions take its path and use it
for one signature; a running gateway never loads it. What lives in `DATA_DIR/keys/`:
`<kid>.pem` (online keys), `keyring.json` (their roles and status, the list's version, the
root's public key and chain), `keylist.json` (the signed list the gateway publishes on
`keys`) and `audit.jsonl` (who changed what, when). Blocking file I/O throughout: the CLI's.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cloud_gateway.errors import KeyStoreError
from daemonkit.files import write_durable
from protocol.envelopes import ROLES, KeyList, PublicKey, RootChange, TrustFile
from protocol.errors import SignatureError
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer

KEYRING = "keyring.json"
KEYLIST = "keylist.json"
AUDIT = "audit.jsonl"
TRUST_FILE = "trust.json"
KEYS_DIR = "keys"
KEY_LIST_TTL = timedelta(days=365)
ROOT_CHANGE_TTL = timedelta(days=3650)

ANNOUNCED, ACTIVE, RETIRING = "announced", "active", "retiring"
"""A key's life: announced (listed, not used yet), active (the gateway signs with it),
retiring (listed so what it signed stays valid, no longer used); then retired (unlisted)."""


def new_kid(prefix: str = "gw") -> str:
    """`gw-` plus the time-ordered head of a UUIDv7: later keys sort after earlier ones."""
    return f"{prefix}-" + new_id().replace("-", "")[:20]


@dataclass(slots=True)
class KeyRing:
    """`keyring.json`: the online keys' roles and status, the root and the list's version."""

    version: int
    root: PublicKey
    generation: int = 1
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    root_chain: list[dict[str, Any]] = field(default_factory=list)
    serial: int = 0
    """Every change to the ring counts one up (also `activate`, which signs no new list):
    workers sharing a database take the ring with the highest serial (`security/shared.py`)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "root": self.root.model_dump(mode="json", exclude_none=True),
            "generation": self.generation,
            "keys": self.keys,
            "revoked": self.revoked,
            "root_chain": self.root_chain,
            "serial": self.serial,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> KeyRing:
        return cls(
            version=int(obj["version"]),
            root=PublicKey.model_validate(obj["root"]),
            generation=int(obj.get("generation", 1)),
            keys=dict(obj["keys"]),
            revoked=list(obj.get("revoked", [])),
            root_chain=list(obj.get("root_chain", [])),
            serial=int(obj.get("serial", 0)),
        )

    def active(self) -> str | None:
        """The newest active key (kids sort by creation)."""
        found = sorted(k for k, v in self.keys.items() if v.get("status") == ACTIVE)
        return found[-1] if found else None


def keys_dir(data_dir: Path) -> Path:
    return data_dir / KEYS_DIR


def read_ring(data_dir: Path) -> KeyRing | None:
    """The key ring, or None for a gateway whose keys have no root yet."""
    path = keys_dir(data_dir) / KEYRING
    if not path.exists():
        return None
    try:
        return KeyRing.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"{path}: unreadable key ring: {exc}") from exc


def read_key_list(data_dir: Path) -> dict[str, Any] | None:
    """The root-signed key list the gateway publishes, as signed; None without a root."""
    path = keys_dir(data_dir) / KEYLIST
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"{path}: unreadable key list: {exc}") from exc
    if not isinstance(obj, dict):
        raise KeyStoreError(f"{path}: the key list is not an object")
    return obj


def load_root(path: Path) -> Signer:
    """The offline root from the operator's file (`<kid>` is the file's first line)."""
    try:
        kid, pem = path.read_text(encoding="utf-8").split("\n", 1)
        return Signer.from_pem(kid.strip(), pem.encode())
    except (OSError, ValueError, SignatureError) as exc:
        raise KeyStoreError(f"{path}: not a root key file: {exc}") from exc


def create_root(path: Path) -> Signer:
    """A new root key in `path` (mode 0600); refuses to overwrite one."""
    if path.exists():
        raise KeyStoreError(f"{path} exists: a root key is never overwritten")
    root = Signer.generate(new_kid("root"))
    write_durable(path, root.kid.encode() + b"\n" + root.to_pem(), mode=0o600)
    return root


def online_key(data_dir: Path, kid: str) -> Signer:
    path = keys_dir(data_dir) / f"{kid}.pem"
    try:
        return Signer.from_pem(kid, path.read_bytes())
    except (OSError, ValueError, SignatureError) as exc:
        raise KeyStoreError(f"{path}: cannot load online key {kid!r}: {exc}") from exc


def audit(data_dir: Path, action: str, **details: Any) -> None:
    """Append who did what, when, to `keys/audit.jsonl` (flushed to disk)."""
    entry = {"at": format_time(utcnow()), "who": getpass.getuser(), "action": action, **details}
    path = keys_dir(data_dir) / AUDIT
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()


def audit_entries(data_dir: Path) -> list[dict[str, Any]]:
    """`keys/audit.jsonl` as audit rows (`who`, `action` as `keys.<verb>`, `target`, `at`,
    `detail`), for the gateway's audit log; unreadable lines are skipped."""
    path = keys_dir(data_dir) / AUDIT
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            who, action, at = str(entry.pop("who")), str(entry.pop("action")), entry.pop("at")
        except (ValueError, KeyError, AttributeError):
            continue
        target = str(entry.get("kid") or entry.get("new") or entry.get("root") or "keys")
        rows.append(
            {"who": who, "action": f"keys.{action}", "target": target, "at": at, "detail": entry}
        )
    return rows


def _public(data_dir: Path, kid: str, meta: dict[str, Any]) -> PublicKey:
    roles = meta.get("roles")
    public = online_key(data_dir, kid).public
    return public.model_copy(update={"roles": list(roles) if roles else None})


def _write(data_dir: Path, ring: KeyRing, root: Signer, topic_root: str | None) -> dict[str, Any]:
    """Sign the ring's key list with `root` and write the ring, the list and `trust.json`."""
    now = utcnow()
    listed = [_public(data_dir, kid, meta) for kid, meta in sorted(ring.keys.items())]
    body = KeyList(
        version=ring.version,
        keys=listed,
        issued_at=now,
        expires_at=now + KEY_LIST_TTL,
        revoked=ring.revoked,
    ).to_wire()
    if ring.root_chain:
        body["root_chain"] = ring.root_chain
    signed = root.sign(body)
    folder = keys_dir(data_dir)
    ring.serial += 1
    write_durable(folder / KEYRING, json.dumps(ring.to_json(), indent=2).encode(), mode=0o600)
    write_durable(folder / KEYLIST, json.dumps(signed, indent=2).encode())
    write_trust(data_dir, ring, topic_root)
    return signed


def write_trust(data_dir: Path, ring: KeyRing, topic_root: str | None) -> Path:
    """`trust.json` for devices provisioned from now on: the keys, the root and its generation."""
    path = data_dir / TRUST_FILE
    if topic_root is None:
        topic_root = "edgemart/v1"
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            topic_root = str(old.get("topic_root", topic_root))
    listed = [_public(data_dir, kid, meta) for kid, meta in sorted(ring.keys.items())]
    trust = TrustFile(
        keys=listed, topic_root=topic_root, root=ring.root, root_generation=ring.generation
    )
    text = json.dumps(trust.to_wire(), indent=2) + "\n"
    write_durable(path, text.encode())
    return path


def _ring(data_dir: Path) -> KeyRing:
    ring = read_ring(data_dir)
    if ring is None:
        raise KeyStoreError(f"no key ring in {keys_dir(data_dir)}: run `edgemart keys init`")
    return ring


def _check_root(ring: KeyRing, root: Signer) -> None:
    if root.public.public_key != ring.root.public_key:
        raise KeyStoreError(f"{root.kid!r} is not this fleet's current root ({ring.root.kid!r})")


def init(data_dir: Path, root_path: Path, topic_root: str | None = None) -> dict[str, Any]:
    """Give the gateway's keys a root: the root file made (or reused), the online keys in
    `keys/` listed (the newest active, with every role), version 1 signed."""
    if read_ring(data_dir) is not None:
        raise KeyStoreError(f"{keys_dir(data_dir)} already has a key ring")
    folder = keys_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = load_root(root_path) if root_path.exists() else create_root(root_path)
    pems = sorted(p.stem for p in folder.glob("*.pem"))
    if not pems:
        signer = Signer.generate(new_kid())
        write_durable(folder / f"{signer.kid}.pem", signer.to_pem(), mode=0o600)
        pems = [signer.kid]
    keys = {kid: {"status": RETIRING, "roles": None} for kid in pems}
    keys[pems[-1]]["status"] = ACTIVE
    # devices provisioned before roots pin the online key: it introduces the root to them
    now = utcnow()
    intro = RootChange(
        generation=1, root=root.public, issued_at=now, expires_at=now + ROOT_CHANGE_TTL
    )
    chain = [online_key(data_dir, pems[-1]).sign(intro.to_wire())]
    ring = KeyRing(version=1, root=root.public, keys=keys, root_chain=chain)
    signed = _write(data_dir, ring, root, topic_root)
    audit(data_dir, "init", root=root.kid, version=1, keys=pems)
    return signed


def add(data_dir: Path, root_path: Path, roles: list[str] | None = None) -> str:
    """A new online key, announced in a new list (the gateway does not use it yet)."""
    ring = _ring(data_dir)
    root = load_root(root_path)
    _check_root(ring, root)
    for role in roles or ():
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    signer = Signer.generate(new_kid())
    write_durable(keys_dir(data_dir) / f"{signer.kid}.pem", signer.to_pem(), mode=0o600)
    ring.keys[signer.kid] = {"status": ANNOUNCED, "roles": roles or None}
    ring.version += 1
    _write(data_dir, ring, root, None)
    audit(data_dir, "add", kid=signer.kid, roles=roles, version=ring.version)
    return signer.kid


def activate(data_dir: Path, kid: str) -> None:
    """The gateway signs with `kid` (a running one within `keys_watch_s`); the active one
    before is retiring.
    No new list (its members are unchanged), so no root needed."""
    ring = _ring(data_dir)
    if kid not in ring.keys:
        raise KeyStoreError(f"key {kid!r} is not in the list; listed: {sorted(ring.keys)}")
    for meta in ring.keys.values():
        if meta.get("status") == ACTIVE:
            meta["status"] = RETIRING
    ring.keys[kid]["status"] = ACTIVE
    ring.serial += 1
    write_durable(
        keys_dir(data_dir) / KEYRING, json.dumps(ring.to_json(), indent=2).encode(), mode=0o600
    )
    audit(data_dir, "activate", kid=kid, version=ring.version)


def retire(data_dir: Path, root_path: Path, kid: str, *, revoke: bool = False) -> int:
    """`kid` leaves the list (a new version); with `revoke`, it is also named revoked, so
    devices drop what it signed. The key's file moves to `keys/retired/`."""
    ring = _ring(data_dir)
    root = load_root(root_path)
    _check_root(ring, root)
    if kid not in ring.keys:
        raise KeyStoreError(f"key {kid!r} is not in the list; listed: {sorted(ring.keys)}")
    if ring.keys[kid].get("status") == ACTIVE:
        if not revoke:
            raise KeyStoreError(f"key {kid!r} is active: activate another one first")
        # an emergency: a fresh key replaces it at once (the gateway restarts on it)
        fresh = Signer.generate(new_kid())
        write_durable(keys_dir(data_dir) / f"{fresh.kid}.pem", fresh.to_pem(), mode=0o600)
        ring.keys[fresh.kid] = {"status": ACTIVE, "roles": ring.keys[kid].get("roles")}
        audit(data_dir, "add", kid=fresh.kid, replaces=kid, version=ring.version + 1)
    del ring.keys[kid]
    if revoke and kid not in ring.revoked:
        ring.revoked.append(kid)
    ring.version += 1
    _write(data_dir, ring, root, None)
    gone = keys_dir(data_dir) / "retired"
    gone.mkdir(exist_ok=True, mode=0o700)
    pem = keys_dir(data_dir) / f"{kid}.pem"
    if pem.exists():
        pem.rename(gone / pem.name)
    audit(data_dir, "revoke" if revoke else "retire", kid=kid, version=ring.version)
    return ring.version


def rotate_root(data_dir: Path, root_path: Path, new_root_path: Path) -> str:
    """A new root, signed by the old (a `RootChange` in every list from now on); the new
    list is signed by the new root. Keep the old root file apart until every device has
    taken a list signed by the new one, then destroy it."""
    ring = _ring(data_dir)
    old = load_root(root_path)
    _check_root(ring, old)
    new = create_root(new_root_path)
    now = utcnow()
    change = RootChange(
        generation=ring.generation + 1,
        root=new.public,
        issued_at=now,
        expires_at=now + ROOT_CHANGE_TTL,
    )
    ring.root_chain.append(old.sign(change.to_wire()))
    ring.root_chain = ring.root_chain[:1] + ring.root_chain[1:][-7:]  # the introduction stays
    ring.root = new.public
    ring.generation += 1
    ring.version += 1
    _write(data_dir, ring, new, None)
    audit(data_dir, "rotate_root", old=old.kid, new=new.kid, version=ring.version)
    return new.kid
