"""SQL of group buys and price cuts (issue 19): requests decided once each with their signed
answer, groups formed under their row lock, helps counted once per household, both backends.

Plain functions over a session, run on the store thread; each action's decision is in
`db.social_groups` and `db.social_cuts`, handed to `social_batch` by
`cloud_gateway.social.decide`.

What keeps it exact across gateway workers and a SIGKILL:
- a request is stored once under its key (device, request id) with its signed answer, in the
  transaction that decided it: a resend (or a copy another worker got) reads that answer;
- a join locks its group's row (PostgreSQL `FOR UPDATE`; SQLite holds the database's write
  lock) and reads the seats under it: never past `size`; the partial unique index on open
  seats (campaign, offer, household) is the one-seat-per-household rule, even for two devices
  of one household joining two groups at once;
- a help inserts its (cut, household) row: the primary key is the one-help rule; every
  attempt, taken or not, is written to `social_help_log` (the audit, and the rate limits);
- what members are told (a group formed or expired, a cut's new price) is written to
  `social_pushes` in the same transaction, deleted once sent: a crash re-sends it.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cloud_gateway.campaigns.model import Campaign, OfferOut, claim_refusal, needs_facts
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.db.devices import device_facts
from cloud_gateway.db.rows import to_text
from cloud_gateway.errors import StoreError
from protocol.ids import format_time, new_id, parse_time
from protocol.social import SocialRequest

log = logging.getLogger(__name__)

RETRIES = 3
TRANSIENT = frozenset({"40001", "40P01"})
"""SQLSTATEs worth retrying: serialization_failure, deadlock_detected (PostgreSQL)."""
CODE_ATTEMPTS = 8
HOUR = timedelta(hours=1)
OFFER_TYPES = {"group": "group_buy", "cut": "price_cut"}
"""The offer type each kind of social request starts on."""

Decide = Callable[["Txn", str, SocialRequest], tuple[dict[str, Any], str]]
"""decide(txn, device_id, request) -> (the answer's `SocialState` fields, outcome): one
action's decision inside the batch's transaction (`db.social_groups`, `db.social_cuts`)."""
MakeState = Callable[[str, "str | None", dict[str, Any]], dict[str, Any]]
"""make(device_id, request_id, fields) -> the signed wire `SocialState`."""


@dataclass(frozen=True, slots=True)
class Push:
    """A signed state owed to a member (`social_pushes`); deleted once sent."""

    id: str
    device_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SocialAnswer:
    """The stored, signed answer to one request; `new` is False for a repeated key."""

    device_id: str
    request_id: str
    result: dict[str, Any]
    new: bool
    outcome: str
    """What happened, for the counters: started, joined, formed, helped, refused, ..."""


@dataclass(slots=True)
class Txn:
    """One batch's transaction: its session, signer, time, pushes owed, campaigns read."""

    store: Session
    make: MakeState
    now: datetime
    pushes: list[Push]
    campaigns: dict[str, Campaign | None]

    @property
    def when(self) -> str:
        return format_time(self.now)

    def lock(self) -> str:
        return " FOR UPDATE" if self.store.dialect.name == "postgresql" else ""

    def push(self, device_id: str, fields: dict[str, Any]) -> None:
        push = Push(new_id(), device_id, self.make(device_id, None, fields))
        self.store.conn.execute(
            "INSERT INTO social_pushes (id, device_id, payload, at) VALUES (?, ?, ?, ?)",
            [push.id, device_id, to_text(push.payload), self.when],
        )
        self.pushes.append(push)


def household_of(store: Session, device_id: str) -> str:
    """The household a device belongs to (its latest membership), or the device alone."""
    row = store.one(
        "SELECT household_id FROM household_members WHERE device_id = ?"
        " ORDER BY issued_at DESC LIMIT 1",
        [device_id],
    )
    return str(row["household_id"]) if row is not None else f"device:{device_id}"


def _campaign(ctx: Txn, campaign_id: str) -> Campaign | None:
    if campaign_id not in ctx.campaigns:
        row = ctx.store.one("SELECT doc FROM campaigns WHERE id = ?", [campaign_id])
        ctx.campaigns[campaign_id] = (
            Campaign.model_validate_json(row["doc"]) if row is not None else None
        )
    return ctx.campaigns[campaign_id]


def live_offer(
    ctx: Txn, device_id: str, campaign_id: str, offer_id: str, kind: str, *, audience: bool
) -> tuple[Campaign, OfferOut] | str:
    """The live campaign and its offer of type `kind`, or why not."""
    campaign = _campaign(ctx, campaign_id)
    if campaign is None:
        return "unknown campaign"
    if campaign.state != "live":
        return f"campaign is {campaign.state}"
    offer = next((o for o in campaign.offers if o.id == offer_id), None)
    if offer is None or offer.type != kind:
        return f"no {kind} offer {offer_id!r} in this campaign"
    if kind == "group_buy" and offer.group is None:
        return "this group_buy offer has no group terms"
    if audience:
        facts = None
        if needs_facts(campaign):
            found = device_facts(ctx.store, device_id)
            facts = found[0] if found else None
        refusal = claim_refusal(campaign, offer_id, device_id, facts, ctx.now)
        if refusal is not None:
            return refusal
    return campaign, offer


@dataclass(frozen=True, slots=True)
class Start:
    """What a start request starts on: a live offer open to the device, and its household."""

    campaign: Campaign
    offer: OfferOut
    household: str


def start_of(
    ctx: Txn, device_id: str, req: SocialRequest, kind: str
) -> Start | tuple[dict[str, Any], str]:
    """The campaign and offer a `group_start` or `cut_start` names, live, of the kind's offer
    type and in the campaign's audience for this device; otherwise the refusal to answer."""
    if req.campaign_id is None or req.offer_id is None:  # the model requires both
        return refused(kind, "campaign_id and offer_id are required")
    found = live_offer(
        ctx, device_id, req.campaign_id, req.offer_id, OFFER_TYPES[kind], audience=True
    )
    if isinstance(found, str):
        return refused(kind, found, campaign_id=req.campaign_id, offer_id=req.offer_id)
    campaign, offer = found
    return Start(campaign, offer, household_of(ctx.store, device_id))


def offer_end(campaign: Campaign, offer: OfferOut) -> datetime | None:
    return offer.expires_at or campaign.ends_at


def group_fields(row: dict[str, Any], coupon: str | None = None) -> dict[str, Any]:
    """A group's row as `SocialState` fields."""
    fields = _state_fields("group", row, size=row["size"], price=row["price"], coupon=coupon)
    return {**fields, "seats": int(row["seats"])}


def cut_fields(row: dict[str, Any], *, owner: bool) -> dict[str, Any]:
    """A cut's row as `SocialState` fields (the coupon only for its owner)."""
    size, coupon = row["helps_needed"], row["coupon"] if owner else None
    fields = _state_fields("cut", row, size=size, price=row["reached"], coupon=coupon)
    return {**fields, "helps": int(row["helps"])}


def _state_fields(
    kind: str, row: dict[str, Any], *, size: Any, price: Any, coupon: str | None
) -> dict[str, Any]:
    """What a group's and a cut's state say alike: which one, its offer, status, share code,
    size, window and price (a group's or a cut's own column each)."""
    return {
        "kind": kind,
        "ref": row["id"],
        "campaign_id": row["campaign_id"],
        "offer_id": row["offer_id"],
        "status": row["state"],
        "code": row["code"],
        "size": int(size),
        "ends_at": parse_time(row["ends_at"]),
        "price": float(price),
        "coupon": coupon,
    }


def refused(kind: str, reason: str, **extra: Any) -> tuple[dict[str, Any], str]:
    return {"kind": kind, "status": "refused", "reason": reason, **extra}, "refused"


def code_tries(ctx: Txn, device_id: str) -> int:
    """Requests naming a code (join, help) this device had decided in the last hour: those
    of earlier batches and those before it in this one (each is answered in turn)."""
    since = format_time(ctx.now - HOUR)
    row = ctx.store.one(
        "SELECT count(*) AS n FROM social_requests WHERE device_id = ? AND at > ?"
        " AND action IN ('group_join', 'cut_help') AND result IS NOT NULL",
        [device_id, since],
    )
    return int(row["n"]) if row is not None else 0


# ---------------------------------------------------------------- batches


def _decide_batch(
    store: Session,
    requests: Sequence[tuple[str, SocialRequest]],
    make: MakeState,
    now: datetime,
    deciders: Mapping[str, Decide],
) -> tuple[list[SocialAnswer], list[Push]]:
    """Locks in one global order, so two workers' batches never deadlock: first every
    request row (by key), then the groups and cuts (by code), starts last."""
    ctx = Txn(store, make, now, [], {})
    conn = store.conn
    done: dict[tuple[str, str], SocialAnswer] = {}
    fresh: list[tuple[str, SocialRequest]] = []
    unique = {(d, r.id): (d, r) for d, r in requests}
    for key in sorted(unique):
        device_id, req = unique[key]
        inserted = conn.execute(
            "INSERT INTO social_requests (device_id, id, action, at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING id",
            [device_id, req.id, req.action, ctx.when],
        ).fetchone()
        if inserted is None:
            row = store.one(
                "SELECT result FROM social_requests WHERE device_id = ? AND id = ?", [*key]
            )
            if row is not None and row["result"]:
                stored = json.loads(row["result"])
                done[key] = SocialAnswer(device_id, req.id, stored, False, "duplicate")
                continue
        fresh.append((device_id, req))
    fresh.sort(key=lambda r: (r[1].code is None, r[1].code or "", r[0], r[1].id))
    for device_id, req in fresh:
        fields, outcome = deciders[req.action](ctx, device_id, req)
        result = make(device_id, req.id, fields)
        conn.execute(
            "UPDATE social_requests SET result = ? WHERE device_id = ? AND id = ?",
            [to_text(result), device_id, req.id],
        )
        done[device_id, req.id] = SocialAnswer(device_id, req.id, result, True, outcome)
    answers: list[SocialAnswer] = []
    given: set[tuple[str, str]] = set()
    for device_id, req in requests:  # in the order given; a copy in the batch is a duplicate
        answer = done[device_id, req.id]
        if (device_id, req.id) in given:
            answer = SocialAnswer(device_id, req.id, answer.result, False, "duplicate")
        given.add((device_id, req.id))
        answers.append(answer)
    return answers, ctx.pushes


def social_batch(
    store: Session,
    requests: Sequence[tuple[str, SocialRequest]],
    make: MakeState,
    now: datetime,
    deciders: Mapping[str, Decide],
) -> tuple[list[SocialAnswer], list[Push]]:
    """Decide requests in one transaction: each stored once with its signed answer, and the
    pushes owed to other members. A transient conflict decides the batch again."""
    attempt = 0
    while True:
        attempt += 1
        try:
            with store.transaction():
                return _decide_batch(store, requests, make, now, deciders)
        except Error as exc:
            if attempt < RETRIES and getattr(exc, "sqlstate", None) in TRANSIENT:
                log.info("social batch met a transient conflict (%s); deciding it again", exc)
                continue
            raise StoreError(f"cannot decide {len(requests)} social requests: {exc}") from exc


def close_due(store: Session, make: MakeState, now: datetime, limit: int = 200) -> list[Push]:
    """Close what is due, in one transaction: open groups past their window expire (their
    seats released, every member told); open cuts past theirs end, with a coupon at the price
    reached when anyone helped. Several workers may run it: rows are locked, others skipped."""
    try:
        with store.transaction():
            ctx = Txn(store, make, now, [], {})
            skip = " FOR UPDATE SKIP LOCKED" if store.dialect.name == "postgresql" else ""
            conn = store.conn
            groups = conn.execute(
                "SELECT * FROM social_groups WHERE state = 'open' AND ends_at <= ?"  # noqa: S608
                f" ORDER BY ends_at LIMIT ?{skip}",
                [ctx.when, limit],
            ).fetchall()
            for row in groups:
                group = {**dict(row), "state": "expired"}
                members = conn.execute(
                    "SELECT device_id FROM social_seats WHERE group_id = ?"
                    " AND released_at IS NULL ORDER BY household_id",
                    [group["id"]],
                ).fetchall()
                conn.execute(
                    "UPDATE social_groups SET state = 'expired', closed_at = ? WHERE id = ?",
                    [ctx.when, group["id"]],
                )
                conn.execute(
                    "UPDATE social_seats SET released_at = ? WHERE group_id = ?"
                    " AND released_at IS NULL",
                    [ctx.when, group["id"]],
                )
                for member in members:
                    fields = group_fields(group)
                    ctx.push(str(member[0]), {**fields, "reason": "the group did not fill in time"})
            cuts = conn.execute(
                "SELECT * FROM social_cuts WHERE state = 'open' AND ends_at <= ?"  # noqa: S608
                f" ORDER BY ends_at LIMIT ?{skip}",
                [ctx.when, limit],
            ).fetchall()
            for row in cuts:
                cut = dict(row)
                if int(cut["helps"]) > 0:
                    cut.update(state="done", coupon=secrets.token_hex(6).upper())
                else:
                    cut.update(state="expired")
                conn.execute(
                    "UPDATE social_cuts SET state = ?, coupon = ?, closed_at = ? WHERE id = ?",
                    [cut["state"], cut.get("coupon"), ctx.when, cut["id"]],
                )
                ctx.push(str(cut["device_id"]), cut_fields(cut, owner=True))
            return ctx.pushes
    except Error as exc:
        raise StoreError(f"cannot close due groups and cuts: {exc}") from exc


def pushes_owed(store: Session, before: datetime, limit: int = 500) -> list[Push]:
    """Pushes stored before `before` and not yet sent (their sender crashed, or is slow)."""
    rows = store.rows(
        "SELECT id, device_id, payload FROM social_pushes WHERE at < ? ORDER BY at LIMIT ?",
        [format_time(before), limit],
    )
    return [Push(r["id"], r["device_id"], json.loads(r["payload"])) for r in rows]


def pushes_sent(store: Session, ids: Sequence[str]) -> None:
    with store.transaction():
        store.conn.executemany("DELETE FROM social_pushes WHERE id = ?", [(i,) for i in ids])


def group_by_id(store: Session, group_id: str) -> dict[str, Any] | None:
    return store.one("SELECT * FROM social_groups WHERE id = ?", [group_id])


def group_figures(store: Session, campaign_id: str) -> list[dict[str, Any]]:
    """Per offer: groups open, formed and expired; seats held, granted and released."""
    return store.rows(
        "SELECT g.offer_id,"
        " count(*) AS groups,"
        " sum(CASE WHEN g.state = 'open' THEN 1 ELSE 0 END) AS open,"
        " sum(CASE WHEN g.state = 'formed' THEN 1 ELSE 0 END) AS formed,"
        " sum(CASE WHEN g.state = 'expired' THEN 1 ELSE 0 END) AS expired,"
        " sum(CASE WHEN g.state = 'open' THEN g.seats ELSE 0 END) AS seats_open,"
        " sum(CASE WHEN g.state = 'formed' THEN g.seats ELSE 0 END) AS seats_granted,"
        " sum(CASE WHEN g.state = 'expired' THEN g.seats ELSE 0 END) AS seats_released"
        " FROM social_groups g WHERE g.campaign_id = ? GROUP BY g.offer_id ORDER BY g.offer_id",
        [campaign_id],
    )


def cut_figures(store: Session, campaign_id: str) -> list[dict[str, Any]]:
    """Per offer: cuts open, done and expired; helps taken and refused; prices reached."""
    rows = store.rows(
        "SELECT c.offer_id,"
        " count(*) AS cuts,"
        " sum(CASE WHEN c.state = 'open' THEN 1 ELSE 0 END) AS open,"
        " sum(CASE WHEN c.state = 'done' THEN 1 ELSE 0 END) AS done,"
        " sum(CASE WHEN c.state = 'expired' THEN 1 ELSE 0 END) AS expired,"
        " sum(c.helps) AS helps,"
        " min(c.reached) AS lowest_price, avg(c.reached) AS mean_price"
        " FROM social_cuts c WHERE c.campaign_id = ? GROUP BY c.offer_id ORDER BY c.offer_id",
        [campaign_id],
    )
    refused = store.rows(
        "SELECT c.offer_id, l.outcome, count(*) AS n FROM social_help_log l"
        " JOIN social_cuts c ON c.id = l.cut_id WHERE c.campaign_id = ?"
        " AND l.outcome <> 'accepted' GROUP BY c.offer_id, l.outcome",
        [campaign_id],
    )
    for row in rows:
        row["helps_refused"] = {
            r["outcome"]: int(r["n"]) for r in refused if r["offer_id"] == row["offer_id"]
        }
    return rows


SOCIAL_KEPT = ("social_seats", "social_cuts", "social_helps", "social_help_log")
"""Device-keyed social tables erasure anonymises (the ledger's seats, cuts and helps stay
counted); `social_requests` and `social_pushes` are deleted with the device's data."""


def anonymise_social(store: Session, device_id: str) -> int:
    """Inside the caller's erasure transaction: the device's seats, cuts and helps keep
    counting, under one random name instead of the device's id (and of its household's,
    when the household was the device alone). Rows changed."""
    anon = f"erased-{secrets.token_hex(8)}"
    alone = f"device:{device_id}"
    changed = 0
    for table in SOCIAL_KEPT:
        changed += max(
            store.conn.execute(
                f"UPDATE {table} SET device_id = ?,"  # noqa: S608 - fixed table names
                " household_id = CASE WHEN household_id = ? THEN ? ELSE household_id END"
                " WHERE device_id = ?",
                [anon, alone, anon, device_id],
            ).rowcount,
            0,
        )
    return changed
