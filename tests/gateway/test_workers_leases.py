"""Work that must happen once across gateway workers, on both backends: a lease is held by one
worker until it expires or is released, a once-only loop runs only on its holder, a campaign
transition applied twice (two workers racing) is applied once, and the worker registry lists
the live workers with their leases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_gateway.campaigns.model import CampaignIn, new_campaign, transition
from cloud_gateway.campaigns.pending import Owed
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.backend import Session
from cloud_gateway.db.campaigns import change_campaign, get_campaign, insert_campaign
from cloud_gateway.db.leases import acquire, holders, release
from cloud_gateway.db.open import open_session
from cloud_gateway.db.store import Database
from cloud_gateway.db.workers import WorkerRow, deregister, heartbeat, live_workers
from cloud_gateway.errors import Conflict
from cloud_gateway.runtime.fleet import Lease, while_holding
from tests.support.clock import FakeClock
from tests.support.waiting import eventually

T0 = 1_800_000_000.0


def session_at(gateway_db: str | None, tmp_path: Path, clock: FakeClock) -> Session:
    (tmp_path / "gw").mkdir(exist_ok=True)
    return open_session(
        tmp_path / "gw", gateway_db, clock=lambda: datetime.fromtimestamp(clock(), UTC)
    )


@pytest.fixture
def sessions(
    gateway_db: str | None, tmp_path: Path
) -> Iterator[tuple[FakeClock, Callable[[], Session]]]:
    clock = FakeClock(T0)
    opened: list[Session] = []

    def make() -> Session:
        opened.append(session_at(gateway_db, tmp_path, clock))
        return opened[-1]

    yield clock, make
    for s in opened:
        s.close()


def test_a_lease_has_one_holder_until_it_expires_or_is_released(
    sessions: tuple[FakeClock, Callable[[], Session]],
) -> None:
    clock, make = sessions
    a, b = make(), make()
    assert acquire(a, "once", "worker-a", 10)
    assert not acquire(b, "once", "worker-b", 10)  # held
    clock.advance(8)
    assert acquire(a, "once", "worker-a", 10)  # renewed: now until T0 + 18
    clock.advance(8)
    assert not acquire(b, "once", "worker-b", 10)  # the renewal counts
    assert [r["holder"] for r in holders(b)] == ["worker-a"]
    clock.advance(3)  # worker-a stopped renewing (killed): expired at T0 + 18
    assert acquire(b, "once", "worker-b", 10)
    assert not acquire(a, "once", "worker-a", 10)  # it came back: too late
    assert release(b, "worker-b") == 1
    assert acquire(a, "once", "worker-a", 10)  # released: taken at once, no wait
    assert release(b, "worker-b", ["once"]) == 0  # not b's to release


def test_a_transition_applied_by_two_workers_is_applied_once(
    sessions: tuple[FakeClock, Callable[[], Session]],
) -> None:
    _, make = sessions
    first, second = make(), make()
    now = datetime.fromtimestamp(T0, UTC)
    spec = CampaignIn.model_validate(
        {
            "name": "c",
            "cohorts": ["all"],
            "offers": [
                {
                    "type": "coupon",
                    "title": "x",
                    "category": "games",
                    "surfaces": ["tv_home_banner"],
                }
            ],
        }
    )
    draft = new_campaign(spec, now)
    insert_campaign(first, draft.doc())
    live = transition(draft, "launch", now)

    def launch(store: Session) -> None:  # both workers read `draft`, both decide to launch
        change_campaign(
            store,
            live.doc(),
            who="scheduler",
            action="campaign.launch",
            detail={"from": "draft", "to": "live"},
            at=now,
            owed=[Owed("catalog", draft.id, ("all",))],
            from_state="draft",
        )

    launch(first)
    with pytest.raises(Conflict, match="no longer draft"):
        launch(second)
    launches = [r for r in audit_log(first) if r["action"] == "campaign.launch"]
    assert len(launches) == 1
    owed = first.rows("SELECT count(*) AS n FROM campaign_pending")
    assert owed == [{"n": 1}]  # one push owed, not two
    doc = get_campaign(second, draft.id)
    assert doc is not None and doc["state"] == "live"


def test_the_registry_lists_workers_seen_within_three_heartbeats(
    sessions: tuple[FakeClock, Callable[[], Session]],
) -> None:
    clock, make = sessions
    store = make()
    heartbeat(store, WorkerRow("h-1-aa", "h", 1, T0, 8081, "0.1.0", ("gateway-once",)))
    clock.advance(5)
    heartbeat(store, WorkerRow("h-2-bb", "h", 2, T0 + 5, 8082, "0.1.0", ()))
    assert [(w["id"], w["leases"]) for w in live_workers(store)] == [
        ("h-1-aa", ["gateway-once"]),
        ("h-2-bb", []),
    ]
    clock.advance(5)  # h-1 last seen 10 s ago: gone (killed); h-2 5 s ago
    assert [w["id"] for w in live_workers(store)] == ["h-2-bb"]
    assert live_workers(store)[0]["last_seen"].endswith("Z")
    deregister(store, "h-2-bb")  # drained
    assert live_workers(store) == []


async def test_a_once_only_loop_runs_on_the_holder_and_moves_when_it_expires(
    tmp_path: Path,
) -> None:
    clock = FakeClock(T0)
    mono = FakeClock(100.0)
    db = await Database(
        tmp_path / "gateway.db", clock=lambda: datetime.fromtimestamp(clock(), UTC)
    ).open()
    ran: list[str] = []

    def work(who: str) -> Callable[[], object]:
        async def loop() -> None:
            while True:
                ran.append(who)
                await asyncio.sleep(0.01)

        return loop

    a = Lease(db, "worker-a", ttl_s=10, renew_s=3, monotonic=mono)
    b = Lease(db, "worker-b", ttl_s=10, renew_s=3, monotonic=mono)
    loops = [
        asyncio.create_task(while_holding(a, "sched-a", work("a"))),  # type: ignore[arg-type]
        asyncio.create_task(while_holding(b, "sched-b", work("b"))),  # type: ignore[arg-type]
    ]
    try:
        assert await a.renew()
        assert not await b.renew()
        await eventually(lambda: "a" in ran, 5, "the holder's loop runs")
        assert "b" not in ran
        clock.advance(11)  # a was killed: no renewal for longer than the lease
        mono.advance(11)
        assert not a.holds()  # a would stop on its own before b could take it
        assert await b.renew()
        assert not await a.renew()  # a's renewal is refused: its loop is cancelled
        ran.clear()
        await eventually(lambda: "b" in ran, 5, "the new holder's loop runs")
        await asyncio.sleep(0.05)
        assert set(ran) == {"b"}
        assert (a.taken, b.taken) == (1, 1)
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await db.close()
