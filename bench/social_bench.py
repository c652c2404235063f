"""`group_joins_per_s`: group-buy joins decided the way the social desk does, ledger checked.

Each round makes a fresh gateway database (SQLite, the default backend, WAL and fsync as the
gateway runs it) with a live campaign holding a group-buy offer (groups of 3) and a limited
coupon. GROUPS households start a group each (not timed), then 3 * GROUPS other households
join the codes, three per group for two seats left, in batches of BATCH the way the desk
takes them (`social.decide.social_batch` with `social.desk.signed_state`: one transaction a
batch, the group row read and updated, the seat inserted under the one-seat-per-household
index, the signed answer stored, the formed state pushed to every member). The baseline, in
the same run and alternated with it: as many claims of the limited coupon (stock for two in
three, so both granted and sold-out answers are timed) through the claim desk's path
(`db.claims.claim_batch` with `claims.desk.signed_result`), same batch size. After each
round the ledger is checked: seats == starts + joins accepted, no group over-filled, one open
seat per household, every formed group's members with a coupon; grants == the stock.

Why joins are slower than claims: a join signs 1.67 states on average (its answer, and the
two pushes to the other members when it forms a group) against one a claim, and reads and
writes its group row one request at a time (the row lock) where claims of one offer are
decided together in a few multi-row statements.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path

from bench.record import Record
from cloud_gateway.campaigns.model import CampaignIn, new_campaign, transition
from cloud_gateway.claims.desk import signed_result
from cloud_gateway.db.campaigns import insert_campaign
from cloud_gateway.db.claims import claim_batch, init_stock
from cloud_gateway.db.store import Store
from cloud_gateway.social.decide import social_batch
from cloud_gateway.social.desk import signed_state
from protocol.envelopes import ClaimRequest
from protocol.ids import new_id, utcnow
from protocol.signing import Signer
from protocol.social import SocialRequest

GROUPS = 1000
JOINS = 3 * GROUPS
BATCH = 128
ROUNDS = 3


def _campaign(store: Store) -> str:
    base = {"category": "purifier_filter", "surfaces": ["tv_home_banner"], "price": 199.0}
    offers = [
        {**base, "id": "together", "type": "group_buy", "title": "Buy together",
         "group": {"size": 3, "window_s": 3600, "price": 129.0}},
        {**base, "id": "flash", "type": "coupon", "title": "-50%", "limited": True,
         "stock": 2 * GROUPS},
    ]  # fmt: skip
    spec = CampaignIn.model_validate({"name": "bench", "cohorts": ["all"], "offers": offers})
    now = utcnow()
    campaign = transition(new_campaign(spec, now), "launch", now)
    insert_campaign(store, campaign.doc())
    init_stock(store, campaign.id, [("flash", 2 * GROUPS)])
    return campaign.id


def _joins(signer: Signer, folder: Path) -> float:
    store = Store(folder / "joins.db")
    try:
        cid = _campaign(store)
        make = partial(signed_state, signer=signer)
        starts = [
            (f"st-{i:05d}", SocialRequest(
                id=new_id(), device_id=f"st-{i:05d}", action="group_start", campaign_id=cid,
                offer_id="together", at=utcnow()))
            for i in range(GROUPS)
        ]  # fmt: skip
        codes = []
        for k in range(0, GROUPS, BATCH):
            answers, _ = social_batch(store, starts[k : k + BATCH], make, utcnow())
            codes += [a.result["code"] for a in answers]
        joins = [
            (f"jn-{i:05d}", SocialRequest(
                id=new_id(), device_id=f"jn-{i:05d}", action="group_join",
                code=codes[(i * 7) % GROUPS], at=utcnow()))
            for i in range(JOINS)
        ]  # fmt: skip
        outcomes: Counter[str] = Counter()
        start = time.perf_counter()
        for k in range(0, JOINS, BATCH):
            answers, _ = social_batch(store, joins[k : k + BATCH], make, utcnow())
            outcomes.update(a.outcome for a in answers)
        took = time.perf_counter() - start
        _check_groups(store, outcomes)
    finally:
        store.close()
    return JOINS / took


def _check_groups(store: Store, outcomes: Counter[str]) -> None:
    groups = store.rows("SELECT id, seats, size, state FROM social_groups")
    seats = store.rows("SELECT group_id, household_id, coupon FROM social_seats")
    per_group = Counter(s["group_id"] for s in seats)
    accepted = outcomes["joined"] + outcomes["formed"]
    if len(seats) != GROUPS + accepted or accepted != 2 * GROUPS:
        raise RuntimeError(f"ledger: {len(seats)} seats for {GROUPS} starts + {accepted} joins")
    if any(g["seats"] != per_group[g["id"]] or g["seats"] > g["size"] for g in groups):
        raise RuntimeError("ledger: a group's seats differ from its seat rows or its size")
    if len({s["household_id"] for s in seats}) != len(seats):
        raise RuntimeError("ledger: a household holds two seats")
    formed = {g["id"] for g in groups if g["state"] == "formed"}
    if len(formed) != GROUPS or not all(s["coupon"] for s in seats if s["group_id"] in formed):
        raise RuntimeError(f"ledger: {len(formed)} of {GROUPS} groups formed with coupons")


def _claims(signer: Signer, folder: Path) -> float:
    store = Store(folder / "claims.db")
    try:
        cid = _campaign(store)
        make = partial(signed_result, signer=signer)
        claims = [
            (f"cl-{i:05d}", ClaimRequest(
                id=new_id(), device_id=f"cl-{i:05d}", offer_id="flash", campaign_id=cid,
                at=utcnow()))
            for i in range(JOINS)
        ]  # fmt: skip
        granted = 0
        start = time.perf_counter()
        for k in range(0, JOINS, BATCH):
            granted += sum(
                a.granted for a in claim_batch(store, claims[k : k + BATCH], make, utcnow())
            )
        took = time.perf_counter() - start
        grants = store.one("SELECT count(*) AS n FROM grants")
        if granted != 2 * GROUPS or grants is None or grants["n"] != granted:
            raise RuntimeError(f"claims ledger: {granted} granted, {grants} grants")
    finally:
        store.close()
    return JOINS / took


def run() -> list[Record]:
    signer = Signer.generate("bench")
    joins, claims = [], []
    for r in range(ROUNDS):
        with tempfile.TemporaryDirectory(prefix="social-bench-") as tmp:
            folder = Path(tmp)
            if r % 2:  # alternated, so neither always runs on a warmer machine
                claims.append(_claims(signer, folder))
                joins.append(_joins(signer, folder))
            else:
                joins.append(_joins(signer, folder))
                claims.append(_claims(signer, folder))
    return [
        Record(
            "group_joins_per_s",
            max(joins),
            "joins/s",
            "claims of a limited coupon through the claim desk's path, same batches",
            max(claims),
            f"{JOINS} joins of {GROUPS} groups of 3 (three joins per two seats left: 2/3"
            f" accepted, every group forms and pushes its coupons), {BATCH} a transaction,"
            " signed answers stored; ledger checked (seats == starts + joins accepted, none"
            f" over-filled, one seat per household); SQLite gateway store, best of {ROUNDS},"
            " alternated, fresh database each",
        )
    ]
