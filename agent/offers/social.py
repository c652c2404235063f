"""Group buys and price cuts on the device (issue 19): requests stored first and resent until
a signed answer; every signed state verified, addressed to this device, kept per group or cut.

`POST /v1/groups` (start with an offer, or join with a code another household shared) and
`POST /v1/cuts` (start, or help with a code) store a request, whose id is the idempotency key
the gateway de-duplicates on, before anything is sent on `up/social`; pending requests are
resent on every connect and every `claim_resend_s`. A `SocialState` on `down/social` counts
only if signed by a pinned key of the `claims` role and addressed to this device; a forged or
misaddressed one is refused and counted (`social_states_bad`). `GET /v1/groups/{id}` shows the
latest state of a group (seats taken, time left, the coupon once formed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.config import AgentSettings
from agent.errors import AgentError
from agent.link.transport import Transport
from agent.offers.requests import Kind, Requests
from agent.runtime.metrics import Metrics
from agent.store import idempotency
from agent.store.core import Store
from protocol import codec
from protocol.ids import format_time, new_id, parse_time, utcnow
from protocol.signing import Verifier
from protocol.social import SocialRequest, SocialState
from protocol.topics import Topics

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 16 * 1024
REQUESTS = Kind(
    Topics.social_up,
    "social request",
    "social state",
    bad="social_states_bad",
    max_bytes=MAX_STATE_BYTES,
)
COUNTERS = (
    "social_started",
    "social_resent",
    "social_states",
    "social_states_bad",
    "social_states_stale",
)
ACTIONS = {
    ("group", "start"): "group_start",
    ("group", "join"): "group_join",
    ("cut", "start"): "cut_start",
    ("cut", "help"): "cut_help",
}


class NotSocial(AgentError):
    """The offer cannot be started as a group or a cut (unknown, wrong type); HTTP 409."""

    def __init__(self, offer_id: str, why: str) -> None:
        super().__init__(f"offer {offer_id!r}: {why}")
        self.offer_id = offer_id
        self.why = why


def social_json(request: dict[str, Any] | None, state: dict[str, Any] | None) -> dict[str, Any]:
    """What `GET /v1/groups/{id}` and `/v1/cuts/{id}` return: the request (if asked by its
    id) and the latest verified state, with the seconds left of its window."""
    body: dict[str, Any] = {}
    if request is not None:
        body.update(
            request_id=request["id"],
            action=request["action"],
            pending=request["state"] == "pending",
            attempts=int(request["attempts"]),
        )
        if request["answer"]:
            answer = json.loads(request["answer"])
            body["answer"] = {"status": answer["status"], "reason": answer.get("reason", "")}
    if state is not None:
        doc = json.loads(state["doc"])
        body.update({k: v for k, v in doc.items() if k not in ("kid", "sig", "v")})
        if "ends_at" in doc:
            left = (parse_time(doc["ends_at"]) - utcnow()).total_seconds()
            body["seconds_left"] = max(0, int(left))
    return body


class Social:
    """The device side of group buys and price cuts: start, resend, verify, show."""

    def __init__(
        self,
        settings: AgentSettings,
        store: Store,
        verifier: Verifier,
        metrics: Metrics,
        *,
        link: Transport,
        offer_type: Callable[[str], tuple[str, str] | None],
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        """`offer_type(offer_id)`: the held offer's (type, campaign id), or None."""
        self.settings = settings
        self._store = store
        self._metrics = metrics
        self._offer_type = offer_type
        self._timer = timer
        self._requests = Requests(
            REQUESTS, settings, link, store, verifier, metrics=metrics, sent=store.social.sent
        )
        self._wake = asyncio.Event()
        for name in COUNTERS:
            metrics.counters.setdefault(name, 0)

    async def request(
        self, kind: str, verb: str, *, offer_id: str | None = None, code: str | None = None
    ) -> dict[str, Any]:
        """Store and send a request (`kind` group or cut; `verb` start, join or help)."""
        action = ACTIONS[kind, verb]
        campaign_id = None
        if verb == "start":
            assert offer_id is not None
            held = self._offer_type(offer_id)
            wanted = "group_buy" if kind == "group" else "price_cut"
            if held is None:
                raise NotSocial(offer_id, "not an offer this device holds")
            if held[0] != wanted:
                raise NotSocial(offer_id, f"a {held[0]} offer, not {wanted}")
            campaign_id = held[1]
        request_id = new_id()
        idempotency.answer_with(202, {"request_id": request_id})
        row = await self._store.call(
            self._store.social.open,
            request_id,
            action,
            campaign_id=campaign_id,
            offer_id=offer_id if verb == "start" else None,
            code=code,
        )
        self._metrics.inc("social_started")
        await self._send(row)
        return row

    async def show(self, ident: str) -> dict[str, Any] | None:
        """A request (by its id) with its group's or cut's state, or a state by its ref."""
        request = await self._store.call(self._store.social.get, ident)
        ref = request["ref"] if request is not None else ident
        state = await self._store.call(self._store.social.state, ref) if ref else None
        if request is None and state is None:
            return None
        return social_json(request, state)

    def on_connected(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Resend pending requests on connect and every `claim_resend_s` until answered."""
        interval = self.settings.profile.decisions.claim_resend_s
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.resend()

    async def resend(self) -> int:
        resent = 0
        for row in await self._store.call(self._store.social.pending):
            if not await self._send(row):
                break
            resent += 1
        self._metrics.inc("social_resent", resent)
        return resent

    async def _send(self, row: dict[str, Any]) -> bool:
        request = SocialRequest(
            id=row["id"],
            device_id=self.settings.device_id,
            action=row["action"],
            campaign_id=row["campaign_id"],
            offer_id=row["offer_id"],
            code=row["code"],
            at=datetime.fromtimestamp(float(row["created"]), UTC),
        )
        return await self._requests.send(row["id"], request)

    async def handle_state(self, payload: bytes) -> bool:
        """A message on `down/social`: verified, validated, kept if newer; True when kept."""
        state = self._requests.read(payload, SocialState)
        if state is None:
            return False
        doc = codec.decode_object(payload, max_compressed=MAX_STATE_BYTES)
        applied = await self._store.call(
            self._store.social.apply,
            request_id=state.request_id,
            # a refusal answers its request; it is no state of a group this device is in
            ref=state.ref if state.status != "refused" else None,
            kind=state.kind,
            issued_at=format_time(state.issued_at),
            doc=json.dumps(doc, separators=(",", ":")),
        )
        self._metrics.inc("social_states" if applied else "social_states_stale")
        if applied:
            log.info("%s %s is %s", state.kind, state.ref, state.status)
        return applied
