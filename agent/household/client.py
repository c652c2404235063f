"""What every device of a household runs on the LAN: discovery, the election, the coordinator
server when elected, and a session with the coordinator through which it keeps the latest
household context (`HouseholdSource`), posts its contribution under consent, asks and records
household caps, and (thin devices) ranks remotely: it is the thin device's `RemoteRanker`.

Safe when the coordinator is away: `hold` answers None (the device keeps to its own caps),
exposures wait in `pending` and are replayed, with every exposure of the last two days, to
whichever coordinator comes next (idempotent ids: no double count, no lost exposure)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from agent.decide.remote import (
    REMOTE_TIMEOUT_S,
    RankRequest,
    RankResult,
    RemoteRankError,
    parse_result,
)
from agent.decide.rules import HouseholdHold
from agent.errors import AgentError
from agent.features.household import HouseholdContext
from agent.household import handshake
from agent.household.coordinator import CoordinatorServer, Ranker
from agent.household.discovery import Discovery
from agent.household.election import ELIGIBLE, Candidate, elect
from agent.household.membership import Credentials, MembershipError, check_membership
from agent.household.state import DAY_S, HouseholdCaps
from agent.http.client import Answer, ClientError, HttpClient
from protocol.household import key_fingerprint
from protocol.signing import Verifier

log = logging.getLogger(__name__)
MAX_KEPT_EXPOSURES = 5000
CONTEXT_STALE_S = 600.0
HOLD_TIMEOUT_S = 0.5
RANK_TIMEOUT_S = 0.9 * REMOTE_TIMEOUT_S
"""Within the wait the service gives a thin device's ranking: the client gives up (and counts
it) first."""
STRIKES = 3
"""Failed calls in a row after which the coordinator is taken for gone (before its records'
TTL runs out) and left out of the election until it advertises again."""
SHUNNED_S = 300.0
MAX_SHUNNED = 32


class HouseholdError(AgentError):
    """A call to the coordinator failed (it is away, refused us, or answered nonsense)."""


class NotCoordinator(HouseholdError):
    """The elected device answers, but does not coordinate (yet): not a sign it is gone."""


class HouseholdClient:
    """`async with HouseholdClient(creds, verifier) as hh:` joins the household on the LAN."""

    def __init__(
        self,
        creds: Credentials,
        verifier: Verifier,
        *,
        host: str = "127.0.0.1",
        interfaces: tuple[str, ...] = ("127.0.0.1",),
        tick_s: float = 2.0,
        personalization: Callable[[], bool] = lambda: False,
        ranker: Ranker | None = None,
        counters: Counter[str] | None = None,
        clock: Callable[[], float] = time.time,
        ttl_s: int = 120,
        contribution: Callable[[], tuple[Mapping[str, int], int]] | None = None,
        caps: Callable[[], HouseholdCaps] | None = None,
    ) -> None:
        self.creds = creds
        self.verifier = verifier
        self.host = host
        self.tick_s = tick_s
        self.personalization = personalization
        self.contribution = contribution
        """This device's (category counts of 24 h, member tier), read each round while its
        personalization consent allows; withdrawn from the coordinator as soon as it does not."""
        self.counters = counters if counters is not None else Counter()
        self.clock = clock
        self.eligible = creds.role in ELIGIBLE
        self.server = (
            CoordinatorServer(
                creds, verifier, counters=self.counters, ranker=ranker, clock=clock, caps=caps
            )
            if self.eligible
            else None
        )
        self.discovery: Discovery | None = None
        self._interfaces = interfaces
        self.coordinator: Candidate | None = None
        self.connected_to: str | None = None  # fingerprint of the coordinator of our session
        self.joined_at = 0.0
        self.found_at: float | None = None
        self._token: str | None = None
        self._http: HttpClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        """Set while this device has a session with the household's coordinator."""
        self._context: HouseholdContext | None = None
        self._contribution: tuple[dict[str, int], int] | None = None
        self._contribution_sent = False
        self._withdraw_pending = False
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.kept: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._replay_all = False
        self._levels: dict[str, float] | None = None
        self.shunned: OrderedDict[str, float] = OrderedDict()
        """Fingerprints left out of the election (refused, or gone silent) -> until when."""
        self._strikes = 0
        self._ttl_s = ttl_s

    # ------------------------------------------------------------ life

    async def __aenter__(self) -> HouseholdClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.joined_at = time.monotonic()
        self._http = HttpClient(timeout=3.0)
        port = 9  # thin devices and appliances serve nothing: their advert's port is a placeholder
        if self.server is not None:
            port = await self.server.start(self.host, 0)
        self.discovery = Discovery(
            self.creds,
            port,
            interfaces=self._interfaces,
            host=self.host,
            on_change=self._wake.set,
            on_seen=self._seen,
            counters=self.counters,
            ttl_s=self._ttl_s,
        )
        await self.discovery.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="household")

    async def crash(self) -> None:
        """Stop as a SIGKILLed device would (the fleet's `coordinator-kill`): no mDNS goodbye
        (its advert stays in the others' caches until they find it dead), its LAN server gone
        mid-term, what it held in memory lost with it."""
        if self.discovery is not None:
            self.discovery.advertised = False  # a killed process says no goodbye
        self._token = None
        self.connected.clear()
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.discovery is not None:
            await self.discovery.close()
        if self.server is not None:
            await self.server.stop()
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------ what the device uses

    def household_context(self) -> HouseholdContext | None:
        """The latest snapshot (`HouseholdSource`), or None when away or stale."""
        ctx = self._context
        if ctx is None or self._token is None or self.clock() - ctx.as_of > CONTEXT_STALE_S:
            return None
        return ctx

    def contribute(self, counts: Mapping[str, int], tier: int = 0) -> None:
        """This device's category counts (24 h): sent only while personalization allows."""
        self._contribution = (dict(counts), tier)
        self._contribution_sent = False
        self._wake.set()

    def withdraw(self) -> None:
        """Consent withdrawn: the coordinator drops this device's contribution."""
        self._contribution = None
        self._withdraw_pending = True
        self._wake.set()

    def report_levels(self, levels: Mapping[str, float]) -> None:
        """An appliance's consumables (category -> need in [0, 1])."""
        self._levels = dict(levels)
        self._wake.set()

    def exposed(self, exposure_id: str, offer_id: str, campaign_id: str, at: float) -> None:
        """An impression shown here: recorded with the coordinator now or when it is back."""
        item: dict[str, Any] = {
            "id": exposure_id,
            "offer_id": offer_id,
            "campaign_id": campaign_id,
            "at": at,
            "device_id": self.creds.membership.device_id,
        }
        self.pending[exposure_id] = item
        self.kept[exposure_id] = item
        while len(self.kept) > MAX_KEPT_EXPOSURES:
            self.kept.popitem(last=False)
        while len(self.pending) > MAX_KEPT_EXPOSURES:
            self.pending.popitem(last=False)
            self.counters["household_exposures_dropped"] += 1
        self._wake.set()

    async def record_exposure(
        self, exposure_id: str, offer_id: str, campaign_id: str, at: float
    ) -> None:
        """`exposed`, and told to the coordinator at once when there is one (a short wait:
        the next device to decide must see it); kept for later when that fails."""
        self.exposed(exposure_id, offer_id, campaign_id, at)
        if self._token is None:
            return
        try:
            await self._flush_exposures(timeout=HOLD_TIMEOUT_S)
        except HouseholdError:
            self.counters["household_exposures_deferred"] += 1

    async def hold(self) -> HouseholdHold | None:
        """What the household's caps hold back for this device now; None when away (the
        device then keeps to its own caps)."""
        if self._token is None:
            return None
        try:
            await self._flush_exposures(timeout=HOLD_TIMEOUT_S)
            body = await self._call("GET", "/lan/v1/hold", timeout=HOLD_TIMEOUT_S)
        except HouseholdError:
            self.counters["household_hold_fallbacks"] += 1
            return None
        self._learn(body.get("log"))
        return _hold(body)

    async def rank(self, request: RankRequest) -> RankResult | None:
        """`RemoteRanker`: the coordinator's scores of a thin device's candidates over this
        device's authenticated session, or None (no coordinator, no answer within
        `RANK_TIMEOUT_S`, refused, or an answer that does not parse: counted; the device
        then ranks by priority)."""
        if self._token is None:
            return None
        try:
            body = await self._call(
                "POST", "/lan/v1/rank", request.to_wire(), timeout=RANK_TIMEOUT_S
            )
            return parse_result(body, request.offers)
        except (HouseholdError, RemoteRankError) as exc:
            log.debug("household ranking: %s", exc)
            self.counters["household_rank_fallbacks"] += 1
            return None

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def sync(self) -> None:
        """One round now (tests and the simulator: no waiting for the next tick)."""
        await self._round()

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except HouseholdError as exc:
                log.debug("household round: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)

    def _seen(self, fingerprint: str) -> None:
        """A fresh advert from a device we had left out: it may be back (a restart)."""
        if self.shunned.pop(fingerprint, None) is not None:
            self._wake.set()

    def _shun(self, fingerprint: str) -> None:
        self.shunned[fingerprint] = time.monotonic() + SHUNNED_S
        self.shunned.move_to_end(fingerprint)
        while len(self.shunned) > MAX_SHUNNED:
            self.shunned.popitem(last=False)
        self._wake.set()

    def candidates(self) -> list[Candidate]:
        """Verified adverts of the household, minus the devices left out now."""
        assert self.discovery is not None
        now = time.monotonic()
        for fp, until in list(self.shunned.items()):
            if until <= now:
                del self.shunned[fp]
        return [c for c in self.discovery.candidates() if c.fingerprint not in self.shunned]

    async def _round(self) -> None:
        chosen = elect(self.candidates())
        if chosen != self.coordinator:
            self.coordinator = chosen
            self._drop_session()
            if chosen is not None:
                log.info("household coordinator: %s (%s)", chosen.fingerprint, chosen.role)
        if self.server is not None:
            self.server.serve(chosen is not None and chosen.fingerprint == self.creds.fingerprint)
        if chosen is None:
            return
        try:
            if self._token is None:
                await self._connect(chosen)
            await self._push()
        except NotCoordinator:
            self._drop_session()
            raise
        except HouseholdError:
            self._drop_session()
            self._strikes += 1
            if self._strikes >= STRIKES and chosen.fingerprint != self.creds.fingerprint:
                log.warning("household coordinator %s does not answer", chosen.fingerprint)
                self.counters["household_coordinators_lost"] += 1
                self._strikes = 0
                self._shun(chosen.fingerprint)
            raise
        self._strikes = 0

    def _drop_session(self) -> None:
        if self._token is not None:
            self._replay_all = True
        self._token = None
        self.connected_to = None
        self.connected.clear()

    async def _connect(self, peer: Candidate) -> None:
        nonce_c = handshake.new_nonce()
        hello = await self._post_raw(peer, "/lan/v1/hello", {"nonce": nonce_c})
        try:
            member = check_membership(
                hello.get("membership"),
                self.verifier,
                household_id=self.creds.membership.household_id,
            )
        except MembershipError as exc:
            self._spoofed(peer, exc.reason)
        if key_fingerprint(member.device_key) != peer.fingerprint:
            self._spoofed(peer, "its membership names another key than its advert")
        nonce_s = hello.get("nonce")
        if not handshake.valid_nonce(nonce_s) or not handshake.check(
            member.device_key, hello.get("proof"), "server", nonce_c, str(nonce_s)
        ):
            self._spoofed(peer, "its proof does not verify")
        assert isinstance(nonce_s, str)
        proof = handshake.prove(self.creds.key, "client", nonce_s, nonce_c, peer.fingerprint)
        auth = await self._post_raw(
            peer, "/lan/v1/auth", {"membership": self.creds.wire, "nonce": nonce_s, "proof": proof}
        )
        token = auth.get("token")
        if not isinstance(token, str):
            raise HouseholdError("the coordinator answered no token")
        self._token = token
        self.connected_to = peer.fingerprint
        self.connected.set()
        if self.found_at is None:
            self.found_at = time.monotonic()
        self._contribution_sent = False
        self._withdraw_pending = not self.personalization()  # idempotent: nothing stale stays
        self._replay_all = True
        self.counters["household_sessions"] += 1

    def _spoofed(self, peer: Candidate, reason: str) -> NoReturn:
        self.counters["household_coordinators_refused"] += 1
        self._shun(peer.fingerprint)
        log.warning(
            "refused coordinator %s at %s:%d: %s", peer.fingerprint, peer.host, peer.port, reason
        )
        raise HouseholdError(f"coordinator refused: {reason}")

    async def _push(self) -> None:
        allowed = self.personalization()
        if self.contribution is not None and allowed:
            fresh = self.contribution()
            if fresh != self._contribution:
                self._contribution = (dict(fresh[0]), fresh[1])
                self._contribution_sent = False
        if not allowed and (self._contribution_sent or self._contribution is not None):
            self._withdraw_pending = True
        if self._withdraw_pending:
            await self._call("DELETE", "/lan/v1/contribution")
            self._withdraw_pending = False
            self._contribution_sent = False
            if not allowed:
                self._contribution = None
        if self._contribution is not None and allowed and not self._contribution_sent:
            counts, tier = self._contribution
            await self._call("PUT", "/lan/v1/contribution", {"counts": counts, "tier": tier})
            self._contribution_sent = True
        if self._levels is not None:
            await self._call("PUT", "/lan/v1/consumables", {"levels": self._levels})
        await self._flush_exposures()
        if self.creds.role != "appliance":
            self._learn((await self._call("GET", "/lan/v1/hold")).get("log"))
            self._context = _context(await self._call("GET", "/lan/v1/context"))

    async def _flush_exposures(self, timeout: float = 3.0) -> None:
        horizon = self.clock() - 2 * DAY_S
        source = self.kept if self._replay_all else self.pending
        batch = [e for e in source.values() if e["at"] > horizon]
        if not batch and not self._replay_all:
            return
        for start in range(0, max(len(batch), 1), 1000):
            answer = await self._call(
                "POST",
                "/lan/v1/exposures",
                {"exposures": batch[start : start + 1000]},
                timeout=timeout,
            )
            self._learn(answer.get("log"))
        for e in batch:
            self.pending.pop(e["id"], None)
        self._replay_all = False

    def _learn(self, log_: object) -> None:
        """Keep a copy of the household's exposure log (bounded): replayed to the next
        coordinator if this one dies with it."""
        if not isinstance(log_, list):
            return
        for item in log_[:MAX_KEPT_EXPOSURES]:
            if not isinstance(item, dict):
                continue
            eid, offer, at = item.get("id"), item.get("offer_id"), item.get("at")
            if not isinstance(eid, str) or not isinstance(offer, str):
                continue
            if not isinstance(at, int | float) or eid in self.kept:
                continue
            device = item.get("device_id")
            self.kept[eid] = {
                "id": eid,
                "offer_id": offer,
                "campaign_id": str(item.get("campaign_id", ""))[:128],
                "at": float(at),
                "device_id": device if isinstance(device, str) else None,
            }
        while len(self.kept) > MAX_KEPT_EXPOSURES:
            self.kept.popitem(last=False)

    # ------------------------------------------------------------ HTTP

    async def _post_raw(self, peer: Candidate, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        url = f"http://{peer.host}:{peer.port}{path}"
        try:
            answer = await self._http.request("POST", url, json=body)
            data = _json(answer)
        except (ClientError, TimeoutError, ValueError) as exc:
            raise HouseholdError(f"{path}: {exc}") from exc
        if answer.status == 409:
            raise NotCoordinator(f"{path} -> 409")
        if answer.status != 200 or not isinstance(data, dict):
            raise HouseholdError(f"{path} -> {answer.status}")
        return data

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float = 3.0
    ) -> dict[str, Any]:
        peer, token = self.coordinator, self._token
        if peer is None or token is None or self._http is None:
            raise HouseholdError("no coordinator")
        url = f"http://{peer.host}:{peer.port}{path}"
        try:
            answer = await self._http.request(
                method,
                url,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=timeout,
            )
        except (ClientError, TimeoutError) as exc:
            raise HouseholdError(f"{path}: {exc}") from exc
        if answer.status in (401, 409):
            self._drop_session()
            kind = NotCoordinator if answer.status == 409 else HouseholdError
            raise kind(f"{path} -> {answer.status}")
        if answer.status != 200:
            raise HouseholdError(f"{path} -> {answer.status}: {answer.text()[:200]}")
        try:
            data = _json(answer)
        except ValueError as exc:
            raise HouseholdError(f"{path}: {exc}") from exc
        if not isinstance(data, dict):
            raise HouseholdError(f"{path}: not an object")
        return data


def _json(answer: Answer) -> Any:
    """The answer's JSON whatever its content type; None for an empty body (as aiohttp's
    `json(content_type=None)` did: a peer's empty answer is "not an object", not an error of
    the parser). Raises ValueError on anything else that is not JSON."""
    if not answer.body.strip():
        return None
    return answer.json()


def _hold(body: dict[str, Any]) -> HouseholdHold:
    offers = body.get("offers")
    reason = body.get("reason")
    until = body.get("until")
    return HouseholdHold(
        frozenset(str(o) for o in offers[:5000]) if isinstance(offers, list) else frozenset(),
        reason if isinstance(reason, str) else None,
        float(until) if isinstance(until, int | float) else None,
    )


def _context(body: dict[str, Any]) -> HouseholdContext:
    needs = body.get("consumable_need")
    counts = body.get("category_count_24h")
    return HouseholdContext(
        household_id=str(body.get("household_id", "")),
        consumable_need={str(k): float(v) for k, v in needs.items()}
        if isinstance(needs, dict)
        else {},
        category_count_24h={str(k): int(v) for k, v in counts.items()}
        if isinstance(counts, dict)
        else {},
        member_tier=int(body.get("member_tier", 0)),
        active_devices=int(body.get("active_devices", 0)),
        as_of=float(body.get("as_of", 0.0)),
    )
