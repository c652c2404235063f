"""Price-cut decisions (issue 19): start a cut, help one by its share code.

Each runs inside the social batch's transaction (`db.social.social_batch`): the cut's row is
locked, the (cut, household) primary key is the one-help rule, the price follows the
published schedule (`rules.cut_schedule`), and every attempt is audited with its outcome
(`social_help_log`, also what the rate limits count).
"""

from __future__ import annotations

import secrets
from typing import Any

from cloud_gateway.db.social import (
    CODE_ATTEMPTS,
    HOUR,
    Start,
    Txn,
    code_tries,
    cut_fields,
    household_of,
    live_offer,
    offer_end,
    refused,
    start_of,
)
from cloud_gateway.errors import StoreError
from cloud_gateway.social import rules
from protocol.ids import format_time, new_id, parse_time
from protocol.social import SocialRequest


def start_cut(ctx: Txn, device_id: str, req: SocialRequest) -> tuple[dict[str, Any], str]:
    start = start_of(ctx, device_id, req, "cut")
    if not isinstance(start, Start):
        return start  # refused
    campaign, offer, household = start.campaign, start.offer, start.household
    terms = offer.cut
    assert terms is not None
    key = [campaign.id, offer.id, household]
    conn = ctx.store.conn
    ends = rules.window_end(ctx.now, terms.window_s, offer_end(campaign, offer))
    for _ in range(CODE_ATTEMPTS):
        mine = ctx.store.one(
            "SELECT * FROM social_cuts WHERE campaign_id = ? AND offer_id = ? AND household_id = ?",
            key,
        )
        if mine is not None:
            fields = cut_fields(mine, owner=True)
            return {**fields, "reason": "this household's cut of this offer"}, "existing"
        made = conn.execute(
            "INSERT INTO social_cuts (id, campaign_id, offer_id, code, household_id, device_id,"
            " price, floor, helps_needed, helps, reached, state, created_at, ends_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 'open', ?, ?) ON CONFLICT DO NOTHING"
            " RETURNING *",
            [
                new_id(),
                campaign.id,
                offer.id,
                rules.new_code(),
                household,
                device_id,
                offer.price,
                terms.floor,
                terms.helps,
                offer.price,
                ctx.when,
                format_time(ends),
            ],
        ).fetchone()
        if made is not None:
            return cut_fields(dict(made), owner=True), "started"
    raise StoreError("no free cut code after several attempts")


def _audit_help(
    ctx: Txn, *, cut_id: str | None, household: str, device_id: str, req_id: str, outcome: str
) -> None:
    ctx.store.conn.execute(
        "INSERT INTO social_help_log (cut_id, household_id, device_id, request_id, at, outcome)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [cut_id, household, device_id, req_id, ctx.when, outcome],
    )


def help_cut(ctx: Txn, device_id: str, req: SocialRequest) -> tuple[dict[str, Any], str]:
    household = household_of(ctx.store, device_id)
    if ctx.store.dialect.name == "postgresql":
        # The hourly budgets are counted and spent under one lock per household (held to the
        # end of the transaction), so workers deciding its helps at once cannot both pass
        # the last one; SQLite's one writer serializes them already.
        ctx.store.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(?, 19))", [f"help:{household}"]
        )
    since = format_time(ctx.now - HOUR)
    counts = ctx.store.one(
        "SELECT (SELECT count(*) FROM social_help_log WHERE device_id = ? AND at > ?) AS d,"
        " (SELECT count(*) FROM social_help_log WHERE household_id = ? AND at > ?) AS h",
        [device_id, since, household, since],
    )
    limit = rules.over_limit(int(counts["d"]), int(counts["h"])) if counts else None
    if limit is not None or code_tries(ctx, device_id) >= rules.CODE_TRIES_PER_DEVICE_HOUR:
        _audit_help(
            ctx,
            cut_id=None,
            household=household,
            device_id=device_id,
            req_id=req.id,
            outcome="rate_limited",
        )
        return refused("cut", limit or "rate limit: too many codes tried in the last hour")[
            0
        ], "rate_limited"
    conn = ctx.store.conn
    row = conn.execute(
        f"SELECT * FROM social_cuts WHERE code = ?{ctx.lock()}",  # noqa: S608
        [req.code],
    ).fetchone()
    if row is None:
        _audit_help(
            ctx,
            cut_id=None,
            household=household,
            device_id=device_id,
            req_id=req.id,
            outcome="unknown_code",
        )
        return refused("cut", "no cut with this code")
    cut = dict(row)

    def refuse(outcome: str, reason: str) -> tuple[dict[str, Any], str]:
        _audit_help(
            ctx,
            cut_id=cut["id"],
            household=household,
            device_id=device_id,
            req_id=req.id,
            outcome=outcome,
        )
        return {**cut_fields(cut, owner=False), "status": "refused", "reason": reason}, outcome

    if cut["household_id"] == household:
        return refuse("own_cut", "a household cannot help its own cut")
    if cut["state"] != "open" or ctx.now >= parse_time(cut["ends_at"]):
        return refuse("closed", f"the cut is {cut['state'] if cut['state'] != 'open' else 'over'}")
    found = live_offer(
        ctx, device_id, cut["campaign_id"], cut["offer_id"], "price_cut", audience=False
    )
    if isinstance(found, str):
        return refuse("closed", found)
    helps = int(cut["helps"]) + 1
    needed = int(cut["helps_needed"])
    reached = rules.price_after(float(cut["price"]), float(cut["floor"]), needed, helps)
    inserted = conn.execute(
        "INSERT INTO social_helps (cut_id, household_id, device_id, request_id, at, price_after)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING cut_id",
        [cut["id"], household, device_id, req.id, ctx.when, reached],
    ).fetchone()
    if inserted is None:
        return refuse("duplicate", "this household already helped this cut")
    cut.update(helps=helps, reached=reached)
    if helps >= needed:
        cut.update(state="done", coupon=secrets.token_hex(6).upper(), closed_at=ctx.when)
    conn.execute(
        "UPDATE social_cuts SET helps = ?, reached = ?, state = ?, coupon = ?, closed_at = ?"
        " WHERE id = ?",
        [helps, reached, cut["state"], cut.get("coupon"), cut.get("closed_at"), cut["id"]],
    )
    _audit_help(
        ctx,
        cut_id=cut["id"],
        household=household,
        device_id=device_id,
        req_id=req.id,
        outcome="accepted",
    )
    ctx.push(str(cut["device_id"]), cut_fields(cut, owner=True))
    return cut_fields(cut, owner=False), "helped"
