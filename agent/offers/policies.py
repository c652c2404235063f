"""The operators' policy documents (issue 18): verified, persisted, merged over the profile's
decision settings and handed to `Decisions`, so caps and quiet hours hold while offline.

A document arrives retained on `cohort/{c}/policy`. It is taken when it is signed by a key of
the `commands` role, unexpired, for a cohort this device is in, and of a higher version than
the one held for that cohort; anything else is refused and counted (`policies_rejected`,
`policies_rolled_back`). Once taken it is kept in the store and enforced until a newer one
replaces it, past its `expires_at` too: a device offline for weeks keeps the operators' caps
instead of falling back to looser defaults (`docs/marketers.md`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from agent.config import AgentSettings
from agent.decide.cloud_policy import merge
from agent.decide.decisions import Decisions
from agent.errors import StoreError
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from agent.store.outbox_sql import meta_set
from agent.store.thread import StoreThread
from mqttlink.logs import OnceLogger
from protocol import codec
from protocol.envelopes import PolicyDocument
from protocol.errors import ProtocolError
from protocol.signing import Verifier, decode_signed

log = logging.getLogger(__name__)

MAX_POLICY_BYTES = 256 * 1024
PREFIX = "policy:"
COUNTERS = ("policies_accepted", "policies_rejected", "policies_rolled_back")


def _load_rows(thread: StoreThread) -> dict[str, str]:
    rows = thread.conn().execute("SELECT key, value FROM meta WHERE key LIKE ?", (PREFIX + "%",))
    return {str(k)[len(PREFIX) :]: str(v) for k, v in rows}


def _save_row(thread: StoreThread, cohort: str, value: str) -> None:
    with thread.tx() as tx:
        meta_set(tx, PREFIX + cohort, value)


class PolicyKeeper:
    """Holds the newest verified document per cohort and keeps `decisions` on their merge."""

    def __init__(
        self,
        settings: AgentSettings,
        verifier: Verifier,
        store: Store,
        metrics: Metrics,
        decisions: Decisions,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_change`: after the policy in force changed (the agent republishes its state)."""
        self._settings = settings
        self._verifier = verifier
        self._store = store
        self._metrics = metrics
        self._decisions = decisions
        self._on_change = on_change
        self._faults = OnceLogger(log)
        self.docs: dict[str, PolicyDocument] = {}
        for name in COUNTERS:
            metrics.counters.setdefault(name, 0)

    @property
    def version(self) -> int:
        """The version of the policy in force (0: the profile's settings alone)."""
        return self._decisions.policy_version

    async def load(self) -> None:
        """Take the documents kept by an earlier run (verified when they arrived)."""
        saved = await self._store.call(_load_rows, self._store.thread)
        for cohort, text in saved.items():
            if cohort not in self._settings.profile.cohorts:
                continue
            try:
                self.docs[cohort] = PolicyDocument.model_validate_json(text, extra="ignore")
            except ValueError as exc:
                log.warning("kept policy of cohort %s unreadable, ignored: %s", cohort, exc)
        self._apply()

    def _apply(self) -> None:
        profile = self._settings.profile
        base = self._decisions.base
        policy = merge(
            base.limits,
            base.quiet,
            profile.name,
            profile.cohorts,
            self.docs,
            base_min_score=base.floor.default,
        )
        changed = policy.version != self._decisions.policy_version
        self._decisions.apply_policy(policy)
        if changed:
            self._on_change()

    def _refuse(self, counter: str, reason: str, detail: str) -> None:
        self._metrics.inc(counter)
        self._faults.log(reason, "refused policy: %s", detail)

    async def handle(self, cohort: str, payload: bytes) -> bool:
        """Verify and take one document from `cohort/{cohort}/policy`; True when taken."""
        if not payload:
            return False  # a cleared retained message: not signed, changes nothing
        if cohort not in self._settings.profile.cohorts:
            self._refuse("policies_rejected", "not_my_cohort", f"cohort {cohort!r}")
            return False
        try:
            doc, _unknown = decode_signed(
                payload,
                PolicyDocument,
                self._verifier,
                max_compressed=MAX_POLICY_BYTES,
                role="commands",
            )
        except ProtocolError as exc:
            self._refuse("policies_rejected", exc.reason, str(exc))
            return False
        if doc.cohort != cohort:
            detail = f"document for cohort {doc.cohort!r} arrived on cohort {cohort!r}"
            self._refuse("policies_rejected", "wrong_cohort", detail)
            return False
        held = self.docs.get(cohort)
        if held is not None and doc.version <= held.version:
            if doc.version < held.version:  # the same one again is a retained redelivery
                detail = f"version {doc.version} for {cohort}, {held.version} held"
                self._refuse("policies_rolled_back", "rollback", detail)
            return False
        text = codec.encode(doc).decode()
        try:
            await self._store.call(_save_row, self._store.thread, cohort, text)
        except (sqlite3.Error, StoreError) as exc:
            log.warning("policy %s of cohort %s not kept: %s", doc.version, cohort, exc)
            return False
        self.docs[cohort] = doc
        self._metrics.inc("policies_accepted")
        log.info("policy version %d of cohort %s in force", doc.version, cohort)
        self._apply()
        return True

    def to_json(self) -> dict[str, object]:
        """For `/v1/status`: the version in force and each cohort's document."""
        return {
            "version": self.version,
            "cohorts": {c: d.version for c, d in sorted(self.docs.items())},
        }
