"""Claims for limited offers: one per offer per device, stored first, resent until a signed answer.

`POST /v1/claims` stores the claim (its id is the idempotency key the gateway de-duplicates on)
before anything is sent; a claim already stored for the offer is returned instead of a new one,
across restarts too (a UNIQUE offer id in SQLite). Pending claims are published on `up/claim`
on every connect and every `claim_resend_s` until a `ClaimResult` signed by a pinned key,
addressed to this device and naming a pending claim, arrives on `down/claim`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.config import AgentSettings
from agent.errors import AgentError, UnknownOffer
from agent.link.transport import Transport
from agent.offers.requests import Kind, Requests
from agent.runtime.metrics import Metrics
from agent.store import idempotency
from agent.store.core import Store
from protocol.envelopes import ClaimRequest, ClaimResult, Offer
from protocol.ids import format_time, new_id
from protocol.signing import Verifier
from protocol.topics import Topics

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 16 * 1024
REQUESTS = Kind(
    Topics.claim_up, "claim", "claim result", bad="claim_results_bad", max_bytes=MAX_RESULT_BYTES
)
MAX_TICK_S = 1.0
"""The longest the resend loop sleeps before looking at its timer again (a test's fake timer
is moved, not waited for)."""
COUNTERS = (
    "claims_started",
    "claims_repeated",
    "claims_resent",
    "claims_granted",
    "claims_refused",
    "claim_results_bad",
    "claim_results_duplicate",
    "claims_refused_stale",
    "claims_queued",
    "claims_closed_sold_out",
)


class NotClaimable(AgentError):
    """The offer cannot be claimed (not limited, sold out, expired); HTTP 409."""

    def __init__(self, offer_id: str, why: str) -> None:
        super().__init__(f"offer {offer_id!r} cannot be claimed: {why}")
        self.offer_id = offer_id
        self.why = why


def claim_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored claim as `GET /v1/claims/{id}` returns it."""
    body: dict[str, Any] = {
        "id": row["id"],
        "offer_id": row["offer_id"],
        "campaign_id": row["campaign_id"],
        "state": row["state"],
        "created_at": format_time(datetime.fromtimestamp(float(row["created"]), UTC)),
        "attempts": int(row["attempts"]),
    }
    if row["state"] != "pending":
        body["code"] = row["code"]
        body["reason"] = row["reason"]
    return body


class Claims:
    """The device side of claims: start, resend, verify answers, report state."""

    def __init__(
        self,
        settings: AgentSettings,
        store: Store,
        verifier: Verifier,
        metrics: Metrics,
        *,
        link: Transport,
        offer: Callable[[str], Offer | None],
        stale_trust: Callable[[], str | None] = lambda: None,
        timer: Callable[[], float] = time.monotonic,
        held_back: Callable[[Offer], str | None] | None = None,
        turn: Callable[[Offer], str] = lambda _offer: "go",
    ) -> None:
        """`timer`: the monotonic clock the resend interval runs on; `stale_trust`: why the
        device's view of the cloud is stale (`agent.offers.trust`), None when fresh."""
        self._stale_trust = stale_trust
        self._held_back = held_back
        """Why a live sale holds a claim back (sold out, sealed: `agent.offers.waves`)."""
        self._turn = turn
        """A wave's admission (`LiveSale.turn`): "go", "wait" (stored, sent once admitted)
        or "closed" (sold out: a claim never sent is closed here)."""
        self.settings = settings
        self._store = store
        self._metrics = metrics
        self._offer = offer
        self._requests = Requests(
            REQUESTS, settings, link, store, verifier, metrics=metrics, sent=store.claims.sent
        )
        self._wake = asyncio.Event()
        self._timer = timer
        self._round_at = timer()
        self._round = asyncio.Lock()  # one resend round at a time (the loop's or a test's)
        self._idle = False  # the last round found no pending claim and none was sent since
        self._connected = False  # a connect since the last round: resend every pending claim
        for name in COUNTERS:
            metrics.counters.setdefault(name, 0)
        self.refused: frozenset[str] = frozenset()
        """Offers whose claim the gateway refused: the ranking stops offering them."""

    async def start(self) -> None:
        self.refused = frozenset(
            c["offer_id"] for c in await self._store.call(self._store.claims.all, "refused")
        )

    async def claim(self, offer_id: str, now: datetime) -> tuple[dict[str, Any], bool]:
        """Start (or return the existing) claim of a held limited offer; True when new."""
        offer = self._offer(offer_id)
        if offer is None:
            raise UnknownOffer(offer_id)
        if not offer.limited:
            raise NotClaimable(offer_id, "not a limited offer (no claim needed)")
        stale = self._stale_trust()
        if stale is not None:
            # a frozen view may hold a revoked key's offer or stock long gone (issue 14)
            self._metrics.inc("claims_refused_stale")
            raise NotClaimable(offer_id, f"trust is stale ({stale}): no claims until it is fresh")
        if self._held_back is not None:
            why = self._held_back(offer)
            if why is not None:
                raise NotClaimable(offer_id, why)
        claim_id = new_id()
        # keyed: the key is committed with a new claim; a replay shows the claim as it is now
        idempotency.answer_with(202, {"claim_id": claim_id})
        row, created = await self._store.call(
            self._store.claims.open, claim_id, offer.id, offer.campaign_id
        )
        if not created:
            self._metrics.inc("claims_repeated")
            return row, False
        if offer.stock == 0 or now >= offer.expires_at:
            # stored anyway (one claim per offer); answered by the gateway like any other
            log.info(
                "claim %s for %s sent although it looks sold out or expired", row["id"], offer_id
            )
        self._metrics.inc("claims_started")
        if self._turn(offer) == "wait":
            self._metrics.inc("claims_queued")  # sent once a notice admits this device
            return row, True
        await self._send(row)
        return row, True

    async def get(self, claim_id: str) -> dict[str, Any] | None:
        return await self._store.call(self._store.claims.get, claim_id)

    def on_connected(self) -> None:
        self._connected = True
        self._wake.set()

    async def run(self) -> None:
        """Resend every pending claim on connect and every `claim_resend_s` until answered."""
        interval = self.settings.profile.decisions.claim_resend_s
        while True:
            remaining = interval - (self._timer() - self._round_at)
            try:
                wait = None if self._idle else max(0.0, min(remaining, MAX_TICK_S))
                async with asyncio.timeout(wait):  # idle: a new claim or a connect wakes it
                    await self._wake.wait()
            except TimeoutError:
                pass
            await self.tick()

    async def tick(self) -> int:
        """One look: on a connect, or once `claim_resend_s` has passed on the timer since the
        last round, resend every pending claim not just sent. The number resent."""
        interval = self.settings.profile.decisions.claim_resend_s
        async with self._round:
            woken, self._connected = self._connected, False
            self._wake.clear()
            if not woken and self._timer() - self._round_at < interval:
                return 0
            self._round_at = self._timer()
            resent = 0
            pending = await self._store.call(self._store.claims.all, "pending")
            self._idle = not pending
            for row in pending:
                if not await self._admitted(row):
                    continue
                if self._store.clock() - float(row["updated"]) < interval / 2 and row["attempts"]:
                    continue  # just sent
                if not await self._send(row):
                    break
                self._metrics.inc("claims_resent")
                resent += 1
        return resent

    def wake(self) -> None:
        """A wave's admission or sold-out changed: look at every pending claim now."""
        self._connected = True
        self._wake.set()

    async def _admitted(self, row: dict[str, Any]) -> bool:
        """Whether a pending claim may be sent now; one never sent of an offer sold out
        meanwhile is closed here, refused with the notice's reason."""
        offer = self._offer(row["offer_id"])
        turn = "go" if offer is None else self._turn(offer)
        if turn == "go" or (turn == "closed" and row["attempts"]):
            return True  # sent once: the gateway answers it (granted or sold out)
        if turn == "closed":
            closed = await self._store.call(
                self._store.claims.close, row["id"], "sold out (the gateway's notice)"
            )
            if closed:
                self._metrics.inc("claims_closed_sold_out")
                self.refused = self.refused | {row["offer_id"]}
        return False

    async def _send(self, row: dict[str, Any]) -> bool:
        request = ClaimRequest(
            id=row["id"],
            device_id=self.settings.device_id,
            offer_id=row["offer_id"],
            campaign_id=row["campaign_id"],
            at=datetime.fromtimestamp(float(row["created"]), UTC),
        )
        if not await self._requests.send(row["id"], request):
            return False
        if self._idle:  # the loop sleeps without a deadline: wake it to arm its timer again
            self._idle = False  # (only that: a round now would resend what was just sent)
            self._wake.set()
        return True

    async def handle_result(self, payload: bytes) -> bool:
        """A message on `down/claim`: verified, validated, applied once; True when applied."""
        result = self._requests.read(payload, ClaimResult)
        if result is None:
            return False
        stored = await self._store.call(self._store.claims.get, result.claim_id)
        if stored is None or stored["offer_id"] != result.offer_id:
            unknown = f"no claim {result.claim_id!r} for {result.offer_id!r}"
            self._requests.refuse("unknown_claim", unknown)
            return False
        applied = await self._store.call(
            self._store.claims.answer,
            result.claim_id,
            granted=result.granted,
            code=result.code,
            reason=result.reason,
            result_id=result.id,
        )
        if not applied:
            self._metrics.inc("claim_results_duplicate")
            return False
        if result.granted:
            self._metrics.inc("claims_granted")
        else:
            self._metrics.inc("claims_refused")
            self.refused = self.refused | {result.offer_id}
        log.info(
            "claim %s for %s %s%s",
            result.claim_id,
            result.offer_id,
            "granted" if result.granted else "refused",
            f": {result.reason}" if result.reason else "",
        )
        return True
