"""The device's trust in the cloud's keys (issue 14): key lists from `keys` verified against
the pinned offline root and taken only at a higher version, revoked keys' offers dropped, and
freshness from the signed timestamp on `timestamp` (`stale_trust`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime

from agent.offers.book import OfferBook
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from mqttlink.logs import OnceLogger
from protocol import codec
from protocol.envelopes import Timestamp, TrustFile
from protocol.errors import ProtocolError
from protocol.ids import utcnow
from protocol.signing import Verifier
from protocol.trust import (
    RolledBack,
    TrustState,
    accept_key_list,
    accept_timestamp,
    adopt_root,
    stale_reason,
)

log = logging.getLogger(__name__)

MAX_TRUST_BYTES = 64 * 1024
COUNTERS = (
    "keylists_accepted",
    "keylists_rejected",
    "keylists_ignored",
    "timestamps_accepted",
    "timestamps_rejected",
    "offers_dropped_revoked",
)


class TrustKeeper:
    """Keeps `verifier` (shared by every part that verifies) on the current key list.

    Without a root in `trust.json` (a fleet provisioned before roots) trust is never stale and
    the pinned keys stay, until a key list introduces a root signed by a pinned key (the
    gateway's `edgemart keys init` does): from then on the device is like one provisioned
    with that root. Other key lists are ignored then (counted)."""

    def __init__(
        self,
        pinned: TrustFile,
        verifier: Verifier,
        store: Store,
        metrics: Metrics,
        offers: OfferBook,
        *,
        on_revoked: Callable[[frozenset[str]], None] = lambda _kids: None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        """`on_revoked(kids)`: after a key list revoking `kids` is taken, for what the device
        holds outside the offer book (the running model)."""
        self._on_revoked = on_revoked
        self._pinned = pinned
        self._verifier = verifier
        self._store = store
        self._metrics = metrics
        self._offers = offers
        self._now = now
        self._faults = OnceLogger(log)
        for name in COUNTERS:
            metrics.counters.setdefault(name, 0)
        self.state: TrustState | None = None
        if pinned.root is not None:
            self.state = TrustState(pinned.root, pinned.root_generation, 0, tuple(pinned.keys))
        self.stamp: Timestamp | None = None

    @property
    def rooted(self) -> bool:
        return self.state is not None

    async def load(self) -> None:
        """Take the trust persisted by an earlier run (a newer key list than `trust.json`)."""
        saved = await self._store.call(self._store.offers.trust_load)
        try:
            if "state" in saved:
                state = TrustState.from_json(json.loads(saved["state"]))
                if self.state is None or state.version > self.state.version:
                    self.state = state
            if "timestamp" in saved:
                self.stamp = Timestamp.model_validate_json(saved["timestamp"], extra="ignore")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable persisted trust: %s", exc)
        if self.state is None:
            return
        self._verifier.replace(self.state.keys)
        if self.state.revoked:  # a model kept on disk may be one a revoked key signed
            self._on_revoked(self.state.revoked)

    def stale(self) -> str | None:
        """Why trust is stale now (`protocol.trust.stale_reason`), None when fresh or unrooted."""
        if self.state is None:
            return None
        return stale_reason(self.stamp, self.state, self._now())

    def to_json(self) -> dict[str, object]:
        """For `/v1/status`: the key list held, the timestamp and whether trust is stale."""
        state = self.state
        return {
            "rooted": state is not None,
            "root": state.root.kid if state else None,
            "root_generation": state.generation if state else None,
            "keys_version": state.version if state else None,
            "keys": sorted(self._verifier.keys),
            "timestamp": self.stamp.version if self.stamp else None,
            "stale_trust": self.stale(),
        }

    def _refuse(self, counter: str, exc: ProtocolError, what: str) -> None:
        self._metrics.inc(counter)
        self._faults.log(f"{what}:{exc.reason}", "refused %s: %s", what, exc)

    async def handle_keys(self, payload: bytes) -> bool:
        """A key list from `keys`: True when it was taken (and the verifier changed)."""
        if not payload:
            return False
        try:
            obj = codec.decode_object(payload, max_compressed=MAX_TRUST_BYTES)
            held = self.state
            if held is None:
                try:
                    held = adopt_root(tuple(self._pinned.keys), obj, self._now())
                except ProtocolError:
                    self._metrics.inc("keylists_ignored")
                    return False
            state = accept_key_list(held, obj, self._now())
        except RolledBack as exc:
            if exc.got == exc.held:  # the retained list again, on every reconnect
                return False
            self._refuse("keylists_rejected", exc, "key list")
            return False
        except ProtocolError as exc:
            self._refuse("keylists_rejected", exc, "key list")
            return False
        await self._store.call(self._store.offers.trust_save, "state", json.dumps(state.to_json()))
        self.state = state
        self._verifier.replace(state.keys)
        self._metrics.inc("keylists_accepted")
        log.info(
            "key list %d taken (root %s): keys %s, revoked %s",
            state.version,
            state.root.kid,
            [k.kid for k in state.keys],
            sorted(state.revoked),
        )
        if state.revoked:
            dropped = await self._offers.drop_signed_by(state.revoked)
            if dropped:
                log.warning("dropped %d offers signed by revoked keys", dropped)
            self._on_revoked(state.revoked)
        return True

    async def handle_timestamp(self, payload: bytes) -> bool:
        """A timestamp from `timestamp`: True when it was taken."""
        if not payload or self.state is None:
            return False
        held = self.stamp.version if self.stamp else 0
        try:
            obj = codec.decode_object(payload, max_compressed=MAX_TRUST_BYTES)
            stamp = accept_timestamp(self._verifier, obj, held, self._now())
        except ProtocolError as exc:
            self._refuse("timestamps_rejected", exc, "timestamp")
            return False
        if stamp.version == held:
            return False
        await self._store.call(
            self._store.offers.trust_save, "timestamp", json.dumps(stamp.to_wire())
        )
        self.stamp = stamp
        self._metrics.inc("timestamps_accepted")
        return True
