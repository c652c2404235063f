"""Trust for a fleet's life (issue 14): key lists verified against a pinned offline root,
walked through root changes, taken only at a higher version; freshness by timestamp. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from protocol import codec
from protocol.envelopes import KeyList, PublicKey, RootChange, Timestamp
from protocol.errors import ProtocolError, SignatureError
from protocol.signing import Verifier

MAX_CHAIN = 8


class RolledBack(ProtocolError):
    """A genuinely signed message older than the one held (a replay, or a frozen view)."""

    reason = "rollback"

    def __init__(self, message: str, held: int, got: int) -> None:
        super().__init__(message)
        self.held = held
        self.got = got


@dataclass(frozen=True, slots=True)
class TrustState:
    """What a device trusts now: the current root (and its generation), the version of the
    key list taken (0: none yet, the pinned keys), the online keys and the revoked ones."""

    root: PublicKey
    generation: int
    version: int
    keys: tuple[PublicKey, ...]
    revoked: frozenset[str] = field(default_factory=frozenset)
    expires_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root.model_dump(mode="json", exclude_none=True),
            "generation": self.generation,
            "version": self.version,
            "keys": [k.model_dump(mode="json", exclude_none=True) for k in self.keys],
            "revoked": sorted(self.revoked),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrustState:
        expires = obj.get("expires_at")
        return cls(
            root=PublicKey.model_validate(obj["root"]),
            generation=int(obj["generation"]),
            version=int(obj["version"]),
            keys=tuple(PublicKey.model_validate(k) for k in obj["keys"]),
            revoked=frozenset(str(k) for k in obj.get("revoked", [])),
            expires_at=datetime.fromisoformat(expires) if isinstance(expires, str) else None,
        )


def walk_roots(
    root: PublicKey, generation: int, chain: object, now: datetime
) -> tuple[PublicKey, int]:
    """The current root from `root` (of `generation`) through the root changes in `chain`
    (raw, as received): each later change must be signed by the root before it."""
    if not isinstance(chain, list):
        return root, generation
    for link in chain[:MAX_CHAIN]:
        if not isinstance(link, dict):
            raise SignatureError("root_chain holds something that is not an object")
        gen = link.get("generation")
        if not isinstance(gen, int) or gen <= generation:
            continue  # a change this device has already walked
        if gen != generation + 1:
            raise SignatureError(f"root chain skips from generation {generation} to {gen}")
        if link.get("kid") != root.kid:
            raise SignatureError(f"root change {gen} not signed by root {root.kid!r}")
        Verifier.from_public_keys([root]).verify(link, now=now)
        change, _ = codec.validate_tolerant(link, RootChange)
        root, generation = change.root, gen
    return root, generation


def adopt_root(pinned: tuple[PublicKey, ...], obj: dict[str, Any], now: datetime) -> TrustState:
    """The first root for a device provisioned before roots: the key list's root change of
    generation 1, signed by a key the device pins (no more trust than it already gives that
    key). Raises SignatureError when the list carries none it can verify."""
    chain = obj.get("root_chain")
    for link in chain[:MAX_CHAIN] if isinstance(chain, list) else ():
        if isinstance(link, dict) and link.get("generation") == 1:
            Verifier.from_public_keys(pinned).verify(link, now=now)
            change, _ = codec.validate_tolerant(link, RootChange)
            return TrustState(change.root, 1, 0, pinned)
    raise SignatureError("no root introduced by a pinned key: key list ignored")


def accept_key_list(state: TrustState, obj: dict[str, Any], now: datetime) -> TrustState:
    """The state after a key list received as `obj`: signed by the current root (after the
    root changes it carries), unexpired, of a higher version. Raises ProtocolError
    (`RolledBack` when its version is not higher than the one held)."""
    root, generation = walk_roots(state.root, state.generation, obj.get("root_chain"), now)
    if obj.get("kid") != root.kid:
        raise SignatureError(f"key list not signed by the root {root.kid!r}", root.kid)
    Verifier.from_public_keys([root]).verify(obj, now=now)
    key_list, _ = codec.validate_tolerant(obj, KeyList)
    if key_list.version <= state.version:
        raise RolledBack(
            f"key list version {key_list.version}, {state.version} held",
            state.version,
            key_list.version,
        )
    revoked = frozenset(key_list.revoked)
    return TrustState(
        root=root,
        generation=generation,
        version=key_list.version,
        keys=tuple(k for k in key_list.keys if k.kid not in revoked),
        revoked=revoked,
        expires_at=key_list.expires_at,
    )


def accept_timestamp(
    verifier: Verifier, obj: dict[str, Any], held: int, now: datetime
) -> Timestamp:
    """A timestamp received as `obj`: signed by a `timestamp` key, unexpired, and not older
    than the one held (`held`: its version, 0 for none). Raises ProtocolError."""
    verifier.verify(obj, role="timestamp", now=now)
    stamp, _ = codec.validate_tolerant(obj, Timestamp)
    if stamp.version < held:
        raise RolledBack(f"timestamp version {stamp.version}, {held} held", held, stamp.version)
    return stamp


def stale_reason(stamp: Timestamp | None, state: TrustState, now: datetime) -> str | None:
    """Why the device's view of the cloud is stale, or None when it is fresh: no timestamp
    yet, an expired one (a frozen broker replays only old ones), or one that names a key
    list newer than the device holds (the list is being withheld)."""
    if stamp is None:
        return "no_timestamp"
    if stamp.expires_at <= now:
        return "timestamp_expired"
    if stamp.keys_version > state.version:
        return "key_list_behind"
    if state.expires_at is not None and state.expires_at <= now:
        return "key_list_expired"
    return None
