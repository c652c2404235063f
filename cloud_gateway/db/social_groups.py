"""Group-buy decisions (issue 19): start a group, take a seat by its code, form it.

Each runs inside the social batch's transaction (`db.social.social_batch`): the group's row
is locked before its seats are read, so a group is never over-filled, and the partial unique
index on open seats keeps one seat per household and offer.
"""

from __future__ import annotations

import secrets
from typing import Any

from cloud_gateway.db.social import (
    CODE_ATTEMPTS,
    Start,
    Txn,
    code_tries,
    group_fields,
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


def start_group(ctx: Txn, device_id: str, req: SocialRequest) -> tuple[dict[str, Any], str]:
    start = start_of(ctx, device_id, req, "group")
    if not isinstance(start, Start):
        return start  # refused
    campaign, offer, household = start.campaign, start.offer, start.household
    terms = offer.group
    assert terms is not None
    conn = ctx.store.conn
    group_id = new_id()
    seat = conn.execute(
        "INSERT INTO social_seats (group_id, household_id, device_id, campaign_id, offer_id,"
        " request_id, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        " RETURNING group_id",
        [group_id, household, device_id, campaign.id, offer.id, req.id, ctx.when],
    ).fetchone()
    if seat is None:
        return refused(
            "group",
            "this household already has a seat in a group of this offer",
            campaign_id=campaign.id,
            offer_id=offer.id,
        )
    ends = rules.window_end(ctx.now, terms.window_s, offer_end(campaign, offer))
    for _ in range(CODE_ATTEMPTS):
        made = conn.execute(
            "INSERT INTO social_groups (id, campaign_id, offer_id, code, size, seats, price,"
            " state, started_by, created_at, ends_at) VALUES (?, ?, ?, ?, ?, 1, ?, 'open',"
            " ?, ?, ?) ON CONFLICT DO NOTHING RETURNING *",
            [
                group_id,
                campaign.id,
                offer.id,
                rules.new_code(),
                terms.size,
                terms.price,
                household,
                ctx.when,
                format_time(ends),
            ],
        ).fetchone()
        if made is not None:
            return group_fields(dict(made)), "started"
    raise StoreError("no free group code after several attempts")


def join_group(ctx: Txn, device_id: str, req: SocialRequest) -> tuple[dict[str, Any], str]:
    if code_tries(ctx, device_id) >= rules.CODE_TRIES_PER_DEVICE_HOUR:
        return refused("group", "rate limit: too many codes tried in the last hour")
    conn = ctx.store.conn
    row = conn.execute(
        f"SELECT * FROM social_groups WHERE code = ?{ctx.lock()}",  # noqa: S608
        [req.code],
    ).fetchone()
    if row is None:
        return refused("group", "no group with this code")
    group = dict(row)
    found = live_offer(
        ctx, device_id, group["campaign_id"], group["offer_id"], "group_buy", audience=False
    )
    if isinstance(found, str):
        return refused("group", found, ref=group["id"])
    household = household_of(ctx.store, device_id)
    held = ctx.store.one(
        "SELECT group_id FROM social_seats WHERE campaign_id = ? AND offer_id = ?"
        " AND household_id = ? AND released_at IS NULL",
        [group["campaign_id"], group["offer_id"], household],
    )
    seat = rules.seat_for(
        state=group["state"],
        size=int(group["size"]),
        seats=int(group["seats"]),
        ends_at=parse_time(group["ends_at"]),
        now=ctx.now,
        household_has_seat=held is not None,
    )
    if not seat.ok:
        fields = group_fields(group)
        return {**fields, "status": "refused", "reason": seat.reason, "coupon": None}, "refused"
    taken = conn.execute(
        "INSERT INTO social_seats (group_id, household_id, device_id, campaign_id, offer_id,"
        " request_id, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        " RETURNING group_id",
        [
            group["id"],
            household,
            device_id,
            group["campaign_id"],
            group["offer_id"],
            req.id,
            ctx.when,
        ],
    ).fetchone()
    if taken is None:  # another device of the household took a seat meanwhile
        fields = group_fields(group)
        reason = "this household already has a seat in a group of this offer"
        return {**fields, "status": "refused", "reason": reason}, "refused"
    group["seats"] = int(group["seats"]) + 1
    if group["seats"] < int(group["size"]):
        conn.execute(
            "UPDATE social_groups SET seats = ? WHERE id = ?", [group["seats"], group["id"]]
        )
        return group_fields(group), "joined"
    # The last seat: the group forms, every member gets its coupon.
    group["state"] = "formed"
    conn.execute(
        "UPDATE social_groups SET seats = ?, state = 'formed', closed_at = ? WHERE id = ?",
        [group["seats"], ctx.when, group["id"]],
    )
    members = conn.execute(
        "SELECT household_id, device_id FROM social_seats WHERE group_id = ?"
        " AND released_at IS NULL ORDER BY household_id",
        [group["id"]],
    ).fetchall()
    mine = ""
    for member in members:
        coupon = secrets.token_hex(6).upper()
        conn.execute(
            "UPDATE social_seats SET coupon = ? WHERE group_id = ? AND household_id = ?",
            [coupon, group["id"], member[0]],
        )
        if member[1] == device_id and member[0] == household:
            mine = coupon
        else:
            ctx.push(str(member[1]), group_fields(group, coupon))
    return group_fields(group, mine), "formed"
