"""`claims_per_s_pg`: two gateway workers deciding flash-sale claims on one PostgreSQL at once.

Each worker is a process of its own with its own connection, deciding batches the way the
claim desk does (`db.claims.claim_batch` with `claims.desk.signed_result`: one transaction a
batch, the stock by one conditional UPDATE, the grant row, the signed answer stored). The
claims come in waves against several offers whose stock runs out part-way, so both paths
(granted, sold out) are timed; the two workers take alternate batches of every wave. The
baseline is the same claims decided by one worker, same run, fresh database each. After each
run the ledger is checked: grants equal the stock consumed, no device holds two grants of an
offer, every claim has its stored answer. A private PostgreSQL (fsync on) serves the run.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from functools import partial
from typing import Any

import psycopg

from bench.record import Record
from cloud_gateway.campaigns.model import CampaignIn, new_campaign, transition
from cloud_gateway.claims.desk import signed_result
from cloud_gateway.db.campaigns import insert_campaign
from cloud_gateway.db.claims import claim_batch, init_stock
from cloud_gateway.db.postgres import PostgresStore
from protocol.envelopes import ClaimRequest
from protocol.ids import new_id, utcnow
from protocol.signing import Signer
from simulators.postgres import PostgresProcess

OFFERS = 4
STOCK = 1500  # per offer: 6,000 coupons for 10,000 claims
WAVES, WAVE = 5, 2000
BATCH = 128  # claims a transaction (the desk takes up to 256 waiting)
ROUNDS = 2


def _fresh(admin: str) -> tuple[str, str]:
    """A migrated database with a live campaign of OFFERS limited offers; (url, campaign)."""
    name = f"c_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = admin.rsplit("/", 1)[0] + "/" + name
    store = PostgresStore(url)
    try:
        offers = [
            {
                "id": f"flash-{o}",
                "type": "coupon",
                "title": "-50%",
                "category": "appliances",
                "surfaces": ["tv_home_banner"],
                "limited": True,
                "stock": STOCK,
            }
            for o in range(OFFERS)
        ]
        spec = CampaignIn.model_validate({"name": "bench", "cohorts": ["all"], "offers": offers})
        now = utcnow()
        campaign = transition(new_campaign(spec, now), "launch", now)
        insert_campaign(store, campaign.doc())
        init_stock(store, campaign.id, [(f"flash-{o}", STOCK) for o in range(OFFERS)])
    finally:
        store.close()
    return url, campaign.id


def _batches(campaign_id: str) -> list[list[tuple[str, ClaimRequest]]]:
    """WAVES waves of WAVE claims (a device each), offers round-robin, in BATCH batches."""
    out = []
    for w in range(WAVES):
        wave = []
        for i in range(WAVE):
            device = f"cl{w}-{i:05d}"
            offer = f"flash-{(i * 7 + w) % OFFERS}"
            claim = ClaimRequest(
                id=new_id(), device_id=device, offer_id=offer, campaign_id=campaign_id, at=utcnow()
            )
            wave.append((device, claim))
        out += [wave[i : i + BATCH] for i in range(0, WAVE, BATCH)]
    return out


def _worker(
    url: str,
    pem: bytes,
    batches: list[list[tuple[str, ClaimRequest]]],
    go: Any,
    done: Any,
) -> None:
    """One worker process: connect, wait for the start, decide its batches, report timing."""
    store = PostgresStore(url)
    make = partial(signed_result, signer=Signer.from_pem("bench", pem))
    go.wait()
    start = time.perf_counter()
    granted = 0
    for batch in batches:
        granted += sum(a.granted for a in claim_batch(store, batch, make, utcnow()))
    done.put((start, time.perf_counter(), granted))
    store.close()


def _decide(url: str, batches: list[list[tuple[str, ClaimRequest]]], workers: int) -> float:
    """Claims/s of `workers` processes taking alternate batches (wall time, first start to
    last end); the ledger checked after."""
    ctx = mp.get_context("spawn")
    go = ctx.Barrier(workers)
    done = ctx.Queue()
    pem = Signer.generate("bench").to_pem()
    procs = [
        ctx.Process(target=_worker, args=(url, pem, batches[k::workers], go, done))
        for k in range(workers)
    ]
    for p in procs:
        p.start()
    spans = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    took: float = max(s[1] for s in spans) - min(s[0] for s in spans)
    _check_ledger(url, sum(s[2] for s in spans))
    return sum(len(b) for b in batches) / took


def _check_ledger(url: str, granted: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        consumed, grants, pairs, claims, unanswered = (
            conn.execute(
                "SELECT (SELECT sum(initial - stock) FROM offer_stock),"
                " (SELECT count(*) FROM grants),"
                " (SELECT count(DISTINCT (offer_id, device_id)) FROM grants),"
                " (SELECT count(*) FROM claims), (SELECT count(*) FROM claims WHERE result IS NULL)"
            ).fetchone()
            or (None,) * 5
        )
    if not (consumed == grants == pairs == granted == OFFERS * STOCK):
        raise RuntimeError(f"ledger: consumed {consumed}, grants {grants}/{pairs}, {granted}")
    if unanswered != 0 or claims != WAVES * WAVE:
        raise RuntimeError(f"claims unanswered {unanswered} of {claims}")


def run() -> list[Record]:
    pg = PostgresProcess(fast=False)
    pg.start()
    two, one = [], []
    try:
        for _ in range(ROUNDS):
            url, cid = _fresh(pg.url)
            one.append(_decide(url, _batches(cid), 1))
            url, cid = _fresh(pg.url)
            two.append(_decide(url, _batches(cid), 2))
    finally:
        pg.remove()
    return [
        Record(
            "claims_per_s_pg",
            max(two),
            "claims/s",
            "the same claims decided by one worker",
            max(one),
            f"2 worker processes, {WAVES} waves of {WAVE} claims on {OFFERS} offers of"
            f" {STOCK} (sold out part-way), {BATCH} a transaction, signed answers stored,"
            f" ledger checked; private PostgreSQL with fsync on, best of {ROUNDS}, alternated,"
            " fresh database each",
        )
    ]
