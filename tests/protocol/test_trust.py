"""Key lists against a pinned root (issue 14): versions only go up, only the current root signs,
root changes are walked one generation at a time, timestamps never go back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from protocol.envelopes import KeyList, PublicKey, RootChange, Timestamp
from protocol.errors import SignatureError
from protocol.ids import utcnow
from protocol.signing import Signer, Verifier
from protocol.trust import (
    RolledBack,
    TrustState,
    accept_key_list,
    accept_timestamp,
    stale_reason,
)

NOW = utcnow()
ROOT = Signer.generate("root-1")
GW1 = Signer.generate("gw-1")
GW2 = Signer.generate("gw-2")


def pinned() -> TrustState:
    return TrustState(ROOT.public, 1, 0, (GW1.public,))


def key_list(
    version: int,
    keys: list[PublicKey],
    *,
    by: Signer = ROOT,
    chain: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    body = KeyList(
        version=version,
        keys=keys,
        issued_at=NOW,
        expires_at=kw.pop("expires_at", NOW + timedelta(days=1)),
        **kw,
    ).to_wire()
    if chain:
        body["root_chain"] = chain
    return by.sign(body)


def change(generation: int, new: Signer, by: Signer) -> dict[str, Any]:
    body = RootChange(
        generation=generation, root=new.public, issued_at=NOW, expires_at=NOW + timedelta(days=9)
    )
    return by.sign(body.to_wire())


def test_a_higher_version_signed_by_the_root_replaces_the_keys_with_their_roles() -> None:
    roles = GW2.public.model_copy(update={"roles": ["offers"]})
    state = accept_key_list(pinned(), key_list(2, [GW1.public, roles], revoked=[]), NOW)
    assert state.version == 2
    verifier = Verifier.from_public_keys(state.keys)
    bundle = GW2.sign({"v": 1, "expires_at": "2999-01-01T00:00:00Z"})
    verifier.verify(bundle, role="offers")
    with pytest.raises(SignatureError, match="may not sign acks"):
        verifier.verify(bundle, role="acks")


def test_a_list_not_signed_by_the_root_an_old_version_or_an_expired_one_is_refused() -> None:
    with pytest.raises(SignatureError, match="not signed by the root"):
        accept_key_list(pinned(), key_list(2, [GW2.public], by=GW1), NOW)
    impostor = Signer(ROOT.kid, Signer.generate("x").private_key)  # the root's kid, not its key
    with pytest.raises(SignatureError, match="does not verify"):
        accept_key_list(pinned(), key_list(2, [GW2.public], by=impostor), NOW)
    state = accept_key_list(pinned(), key_list(3, [GW1.public]), NOW)
    with pytest.raises(RolledBack):
        accept_key_list(state, key_list(2, [GW2.public]), NOW)
    with pytest.raises(SignatureError, match="expired"):
        accept_key_list(
            pinned(), key_list(4, [GW2.public], expires_at=NOW - timedelta(seconds=1)), NOW
        )


def test_revoked_keys_are_left_out_and_named() -> None:
    state = accept_key_list(pinned(), key_list(2, [GW1.public, GW2.public], revoked=["gw-1"]), NOW)
    assert [k.kid for k in state.keys] == ["gw-2"]
    assert state.revoked == frozenset({"gw-1"})


def test_two_root_changes_are_walked_and_a_skipped_one_is_refused() -> None:
    root2, root3 = Signer.generate("root-2"), Signer.generate("root-3")
    chain = [change(2, root2, ROOT), change(3, root3, root2)]
    state = accept_key_list(pinned(), key_list(9, [GW2.public], by=root3, chain=chain), NOW)
    assert (state.root.kid, state.generation, state.version) == ("root-3", 3, 9)
    # a device provisioned after the first change pins root 2 and walks only the second
    later = TrustState(root2.public, 2, 0, ())
    assert (
        accept_key_list(later, key_list(9, [GW2.public], by=root3, chain=chain), NOW).generation
        == 3
    )
    with pytest.raises(SignatureError, match="skips"):
        accept_key_list(pinned(), key_list(9, [GW2.public], by=root3, chain=chain[1:]), NOW)
    forged = [change(2, root3, Signer.generate("root-1"))]  # not signed by the pinned root's key
    with pytest.raises(SignatureError):
        accept_key_list(pinned(), key_list(9, [GW2.public], by=root3, chain=forged), NOW)


def stamp(version: int, *, ttl: timedelta = timedelta(minutes=5), keys: int = 1) -> dict[str, Any]:
    body = Timestamp(
        version=version, issued_at=NOW, expires_at=NOW + ttl, keys_version=keys
    ).to_wire()
    return GW1.sign(body)


def test_timestamps_go_forward_and_a_frozen_view_is_stale() -> None:
    verifier = Verifier.from_public_keys([GW1.public])
    state = accept_key_list(pinned(), key_list(1, [GW1.public]), NOW)
    fresh = accept_timestamp(verifier, stamp(10), 0, NOW)
    assert stale_reason(fresh, state, NOW) is None
    with pytest.raises(RolledBack):
        accept_timestamp(verifier, stamp(9), 10, NOW)
    assert stale_reason(fresh, state, NOW + timedelta(minutes=6)) == "timestamp_expired"
    assert stale_reason(None, state, NOW) == "no_timestamp"
    ahead = accept_timestamp(verifier, stamp(11, keys=2), 10, NOW)
    assert stale_reason(ahead, state, NOW) == "key_list_behind"  # the newer list is withheld
    only_offers = Verifier.from_public_keys([GW1.public.model_copy(update={"roles": ["offers"]})])
    with pytest.raises(SignatureError, match="may not sign timestamp"):
        accept_timestamp(only_offers, stamp(12), 0, NOW)
