"""Claims decided by several workers on one PostgreSQL at once: the stock statement re-checks
a row another worker just updated, and four store sessions deciding overlapping batches (the
same claim delivered twice, a device claiming twice under new keys) grant exactly the stock,
once per device, each key answered the same everywhere."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from typing import Any

import psycopg
import pytest

from cloud_gateway.campaigns.model import Campaign, CampaignIn, new_campaign, transition
from cloud_gateway.db.campaigns import insert_campaign
from cloud_gateway.db.claims import (
    ClaimAnswer,
    _decide_batch,
    claim_batch,
    init_stock,
    stock_left,
)
from cloud_gateway.db.postgres import PostgresStore
from protocol.envelopes import ClaimRequest
from protocol.ids import new_id, utcnow

pytestmark = pytest.mark.integration

STOCKS = {"flash-a": 40, "flash-b": 25, "flash-c": 10}
DEVICES = 300
WORKERS = 4
BATCH = 24


def live(store: PostgresStore, stocks: dict[str, int]) -> Campaign:
    now = utcnow()
    offers = [
        {
            "id": oid,
            "type": "coupon",
            "title": "-50%",
            "category": "appliances",
            "surfaces": ["tv_home_banner"],
            "limited": True,
            "stock": n,
        }
        for oid, n in stocks.items()
    ]
    spec = CampaignIn.model_validate({"name": "flash", "cohorts": ["all"], "offers": offers})
    campaign = transition(new_campaign(spec, now), "launch", now)
    insert_campaign(store, campaign.doc())
    init_stock(store, campaign.id, list(stocks.items()))
    return campaign


def make(device: str, claim: ClaimRequest, granted: bool, code: str | None, reason: str) -> Any:
    return {"device": device, "claim": claim.id, "granted": granted, "code": code, "why": reason}


def waiting_on_a_lock(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
    return row is not None and row[0] == "Lock"


@pytest.mark.parametrize("first_commits", [True, False])
def test_a_waiting_offer_decision_sees_what_the_other_worker_committed(
    postgres_url: str, first_commits: bool
) -> None:
    """Worker a takes the last coupon (uncommitted); worker b's decision of the same offer
    waits on the stock row's lock, then reads what a left: nothing if a committed, the
    coupon if a rolled back."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        campaign = live(a, {"last-one": 1})
        answers: list[ClaimAnswer] = []

        def claim(device: str) -> ClaimRequest:
            return ClaimRequest(
                id=new_id(),
                device_id=device,
                offer_id="last-one",
                campaign_id=campaign.id,
                at=utcnow(),
            )

        def second() -> None:
            answers.extend(claim_batch(b, [("dev-b", claim("dev-b"))], make, utcnow()))

        with a.raw.transaction(force_rollback=not first_commits):
            [took] = _decide_batch(a, [("dev-a", claim("dev-a"))], make, utcnow())
            assert took.granted  # uncommitted: stock 0
            thread = threading.Thread(target=second)
            thread.start()
            deadline = time.monotonic() + 10
            # polled: the wait is inside the other session's server process
            while not waiting_on_a_lock(postgres_url, b.raw.info.backend_pid):
                assert thread.is_alive(), "the second decision did not wait for the row lock"
                assert time.monotonic() < deadline
                time.sleep(0.01)
        thread.join(timeout=10)
        [answer] = answers
        if first_commits:  # it re-read stock 0 and took nothing
            assert (answer.granted, answer.result["why"]) == (False, "sold out")
        else:  # it re-read stock 1 and took it
            assert answer.granted
        assert stock_left(a, campaign.id) == {"last-one": 0}
    finally:
        a.close()
        b.close()


def test_four_workers_grant_exactly_the_stock_once_per_device(postgres_url: str) -> None:
    setup = PostgresStore(postgres_url)
    campaign = live(setup, STOCKS)
    rng = random.Random(12)
    devices = [f"cc-{i:04d}" for i in range(DEVICES)]
    requests: list[tuple[str, ClaimRequest]] = []
    for d in devices:
        for offer in rng.sample(sorted(STOCKS), 2):
            for _ in range(1 + (rng.random() < 0.2)):  # some devices claim again, a new key
                claim = ClaimRequest(
                    id=new_id(), device_id=d, offer_id=offer, campaign_id=campaign.id, at=utcnow()
                )
                requests.append((d, claim))
    # Every claim reaches one worker; a third of them also a second one (redelivery).
    inboxes: list[list[tuple[str, ClaimRequest]]] = [[] for _ in range(WORKERS)]
    for item in requests:
        for w in rng.sample(range(WORKERS), 1 + (rng.random() < 0.33)):
            inboxes[w].append(item)
    for inbox in inboxes:
        rng.shuffle(inbox)
    answers: list[ClaimAnswer] = []
    errors: list[BaseException] = []
    start = threading.Barrier(WORKERS)
    lock = threading.Lock()

    def worker(inbox: list[tuple[str, ClaimRequest]]) -> None:
        store = PostgresStore(postgres_url)
        try:
            start.wait()
            for i in range(0, len(inbox), BATCH):
                got = claim_batch(store, inbox[i : i + BATCH], make, utcnow())
                with lock:
                    answers.extend(got)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(inbox,)) for inbox in inboxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for answer in answers:
        by_key[answer.claim_id].append(answer.result)
    assert len(by_key) == len(requests)  # every claim answered
    assert sum(len(v) for v in by_key.values()) == sum(len(i) for i in inboxes)
    for copies in by_key.values():
        assert all(c == copies[0] for c in copies)  # the same answer wherever it landed
    offer_of = {c.id: c.offer_id for _, c in requests}
    granted = [r for r in (v[0] for v in by_key.values()) if r["granted"]]
    per_offer: dict[str, int] = defaultdict(int)
    for r in granted:
        per_offer[offer_of[r["claim"]]] += 1
    assert per_offer == STOCKS  # exactly the stock: demand (~200 per offer) exceeds it
    pairs = [(offer_of[r["claim"]], r["device"]) for r in granted]
    assert len(pairs) == len(set(pairs))  # one grant per device and offer
    reasons = {r["why"].split(" (")[0] for v in by_key.values() for r in v}
    assert reasons <= {"granted", "sold out", "already granted to this device"}
    ledger = setup.rows("SELECT offer_id, device_id, claim_id, code FROM grants")
    assert sorted((g["offer_id"], g["device_id"], g["claim_id"], g["code"]) for g in ledger) == (
        sorted((offer_of[r["claim"]], r["device"], r["claim"], r["code"]) for r in granted)
    )
    assert stock_left(setup, campaign.id) == dict.fromkeys(STOCKS, 0)
    setup.close()
