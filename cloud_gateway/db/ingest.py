"""SQL of the uplink: batches stored once with their signals, aggregates and outcomes, device
births and state reports, refused messages counted per device.

Plain functions over a session, run on the store thread: `await db.call(store_batches, ...)`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from cloud_gateway.db.backend import Error, Session, SignalRow
from cloud_gateway.db.explain import add_explanations, explanation_rows
from cloud_gateway.db.members import credit_conversions
from cloud_gateway.db.rows import TimeFormatter, to_text
from cloud_gateway.errors import StoreError
from protocol.envelopes import Batch, State
from protocol.ids import format_time

ENSURE_DEVICE = (
    "INSERT INTO devices (device_id, status, first_seen, last_seen, malformed)"
    " VALUES (?, 'offline', ?, ?, 0) ON CONFLICT DO NOTHING"
)
"""Register a device seen for the first time (inside the caller's transaction)."""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What `store_batch_detail` did: `new` is False for a batch already stored."""

    new: bool
    signals: int = 0
    aggregates: int = 0
    outcomes: int = 0
    members: tuple[str, ...] = ()
    """Members whose points its conversions credited (issue 19): their statuses are owed."""


def store_batch(store: Session, device_id: str, batch: Batch, received_at: datetime) -> bool:
    """Store a batch exactly once per (device_id, outbox_id, seq); False if it was already
    stored."""
    return store_batch_detail(store, device_id, batch, received_at).new


def store_batch_detail(
    store: Session, device_id: str, batch: Batch, received_at: datetime
) -> StoredBatch:
    try:
        with store.transaction():
            return _insert_batches(store, [(device_id, batch)], format_time(received_at))[0]
    except Error as exc:
        raise StoreError(f"cannot store batch {batch.seq} of {device_id}: {exc}") from exc


def store_batches(
    store: Session, items: Sequence[tuple[str, Batch]], received_at: datetime
) -> list[StoredBatch]:
    """Group commit: store each (device_id, batch) once, all in ONE transaction (one fsync).

    All or nothing: on a StoreError nothing of the group is stored, and the caller stores
    the batches one by one so that one bad batch cannot lose the others. A (device_id, seq)
    twice in the group is stored once; the second is reported as a duplicate.
    """
    now = format_time(received_at)
    try:
        with store.transaction():
            return _insert_batches(store, items, now)
    except Error as exc:
        raise StoreError(f"cannot store a group of {len(items)} batches: {exc}") from exc


BATCH_COLUMNS = (
    "device_id, outbox_id, seq, received_at, sent_at, signals, aggregates, outcomes, receipts"
)
BATCH_ROWS_PER_STATEMENT = 100
"""Batch rows in one multi-row INSERT (9 parameters each: far below either engine's limit)."""


@functools.lru_cache(maxsize=BATCH_ROWS_PER_STATEMENT)
def _insert_batch_rows_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return (
        f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES {values}"  # noqa: S608 - placeholders only
        " ON CONFLICT DO NOTHING RETURNING device_id, outbox_id, seq"
    )


DEVICE_FROM_BATCH = (
    # One upsert registers a new device or updates a known one. The newest batch's stats
    # win over a late older one; a batch of another outbox (the device's data was wiped,
    # its seq restarted) starts the count again.
    "INSERT INTO devices (device_id, status, first_seen, last_seen, malformed,"
    " agent_version, model_version, stats, last_seq, outbox_id)"
    " VALUES (:device, 'offline', :now, :now, 0, :agent, :model, :stats, :seq, :outbox)"
    " ON CONFLICT (device_id) DO UPDATE SET last_seen = :now, agent_version = :agent,"
    " model_version = coalesce(:model, devices.model_version),"
    " stats = CASE WHEN devices.outbox_id != :outbox"
    " OR :seq >= coalesce(devices.last_seq, -1) THEN :stats ELSE devices.stats END,"
    " last_seq = CASE WHEN devices.outbox_id != :outbox THEN :seq"
    " WHEN :seq > coalesce(devices.last_seq, -1) THEN :seq"
    " ELSE coalesce(devices.last_seq, -1) END,"
    " outbox_id = :outbox"
)


def _insert_batches(
    store: Session, items: Sequence[tuple[str, Batch]], now: str
) -> list[StoredBatch]:
    """The rows of a group of batches, inside the caller's transaction, set-based: the batch
    rows in multi-row INSERTs (RETURNING says which were new), then the aggregates and
    outcomes of each new batch, the devices in one `executemany` (pipelined by psycopg) and
    the signals of the new ones together at the end. A few statements a group instead of
    two or three a batch: on PostgreSQL each statement is a round trip."""
    # Rows are locked in one order, by device: two workers committing groups that share
    # devices then wait for each other instead of deadlocking on the `devices` upsert (seen
    # on PostgreSQL). The sort is stable: a key twice in the group is still stored once, by
    # its first copy. Results come back in the caller's order.
    order = sorted(
        range(len(items)),
        key=lambda i: (items[i][0], items[i][1].outbox_id or "", items[i][1].seq),
    )
    fresh = _insert_batch_rows(store, [items[i] for i in order], now)
    stored: dict[int, StoredBatch] = {}
    signals: list[list[SignalRow]] = []
    claimed: set[tuple[str, str, int]] = set()
    new_devices: list[dict[str, object]] = []
    seen_devices: list[str] = []
    for i in order:
        device_id, batch = items[i]
        key = (device_id, batch.outbox_id or "", batch.seq)
        if key in fresh and key not in claimed:  # the first copy of a key is the stored one
            claimed.add(key)
            stored[i] = _insert_batch_parts(store, device_id, batch, now)
            new_devices.append(_device_row(device_id, batch, now))
            signals.append(_signal_rows(device_id, batch, now[:10]))
        else:
            stored[i] = StoredBatch(new=False)
            seen_devices.append(device_id)
            signals.append([])
    conn = store.conn
    if new_devices:
        conn.executemany(DEVICE_FROM_BATCH, new_devices)
    if seen_devices:
        conn.executemany(ENSURE_DEVICE, [(d, now, now) for d in seen_devices])
        conn.executemany(
            "UPDATE devices SET last_seen = ? WHERE device_id = ?", [(now, d) for d in seen_devices]
        )
    counts = dict(zip(order, store.insert_signals(signals), strict=True))
    return [
        replace(stored[i], signals=counts[i]) if stored[i].new else stored[i]
        for i in range(len(items))
    ]


def _insert_batch_rows(
    store: Session, items: Sequence[tuple[str, Batch]], now: str
) -> set[tuple[str, str, int]]:
    """Insert the batch rows (a key already stored, or twice in `items`, once); returns the
    keys (device_id, outbox_id, seq) inserted by this call."""
    fresh: set[tuple[str, str, int]] = set()
    for start in range(0, len(items), BATCH_ROWS_PER_STATEMENT):
        chunk = items[start : start + BATCH_ROWS_PER_STATEMENT]
        parameters: list[object] = []
        for device_id, batch in chunk:
            parameters += (
                device_id,
                batch.outbox_id or "",
                batch.seq,
                now,
                format_time(batch.sent_at),
                len(batch.signals),
                len(batch.aggregates),
                len(batch.outcomes),
                to_text(batch.receipts),
            )
        rows = store.conn.execute(_insert_batch_rows_sql(len(chunk)), parameters).fetchall()
        fresh.update((r[0], r[1], int(r[2])) for r in rows)
    return fresh


def _signal_rows(device_id: str, batch: Batch, day: str) -> list[SignalRow]:
    """The batch's signal rows; `day` is the received day (`YYYY-MM-DD`)."""
    times = TimeFormatter()
    seq = batch.seq
    return [
        (device_id, s.id, seq, s.kind, times(s.at), to_text(s.attrs) if s.attrs else "{}", day)
        for s in batch.signals
    ]


def _device_row(device_id: str, batch: Batch, now: str) -> dict[str, object]:
    return {
        "now": now,
        "agent": batch.agent_version,
        "model": batch.model_version,
        "outbox": batch.outbox_id or "",
        "seq": batch.seq,
        "stats": to_text(batch.stats.model_dump()),
        "device": device_id,
    }


def _insert_batch_parts(store: Session, device_id: str, batch: Batch, now: str) -> StoredBatch:
    """The aggregates and outcomes of one new batch, inside the caller's transaction."""
    aggregates = outcomes = 0
    if batch.aggregates:
        aggregates = _store_aggregates(store, device_id, batch, now[:10])
    if batch.outcomes:
        outcomes = _store_outcomes(store, device_id, batch, TimeFormatter(), now[:10])
    if batch.signals:
        add_explanations(store, explanation_rows(device_id, batch.signals))
    credited = credit_conversions(store, [(device_id, o) for o in batch.outcomes], now)
    return StoredBatch(True, 0, max(aggregates, 0), max(outcomes, 0), tuple(credited))


def _store_outcomes(
    store: Session, device_id: str, batch: Batch, times: TimeFormatter, day: str
) -> int:
    seq = batch.seq
    stored: int = store.conn.executemany(
        "INSERT INTO outcomes (device_id, id, seq, offer_id, campaign_id,"
        " variant, kind, at, surface, score, model_version, counterfactual, received_day)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (
                device_id,
                o.id,
                seq,
                o.offer_id,
                o.campaign_id,
                o.variant,
                o.kind,
                times(o.at),
                o.surface,
                o.score,
                o.model_version if o.model_version is not None else batch.model_version,
                int(o.counterfactual),
                day,
            )
            for o in batch.outcomes
        ],
    ).rowcount
    store.conn.executemany(  # issue 5: the features each decision used, for training
        "INSERT INTO outcome_features (device_id, id, features) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(device_id, o.id, to_text(o.features)) for o in batch.outcomes if o.features is not None],
    )
    return stored


def _store_aggregates(store: Session, device_id: str, batch: Batch, day: str) -> int:
    """Cumulative snapshots: per (outbox, window, key) the one from the highest seq wins,
    so a late redelivery of an older batch never lowers a count. Each outbox of a device
    counts its own signals, so their snapshots add up. Returns the rows written."""
    outbox, seq = batch.outbox_id or "", batch.seq
    written: int = store.conn.executemany(
        # "window" is quoted: a reserved word in PostgreSQL, a plain name in SQLite.
        'INSERT INTO aggregates (device_id, outbox_id, seq, "window", key, count, seconds,'
        " received_day) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ' ON CONFLICT (device_id, outbox_id, "window", key)'
        " DO UPDATE SET seq = excluded.seq, count = excluded.count,"
        " seconds = excluded.seconds, received_day = excluded.received_day"
        " WHERE excluded.seq > aggregates.seq",
        [
            (device_id, outbox, seq, a.window, a.key, a.count, a.seconds, day)
            for a in batch.aggregates
        ],
    ).rowcount
    return written


STATE_UPSERT = (  # noqa: S608 - one fixed fragment, no input
    # The newest state wins: one reported (or, for a last will, received) earlier than the
    # one stored changes nothing but `last_seen`. `:at` orders them (see `state_order`).
    "INSERT INTO devices (device_id, status, first_seen, last_seen, malformed, profile,"
    " agent_version, model_version, cohorts, state_at, policy_version)"
    " VALUES (:device, :status, :now, :now, 0, :profile, :agent, :model, :cohorts, :at,"
    " :policy)"
    " ON CONFLICT (device_id) DO UPDATE SET last_seen = :now,"
    " status = CASE WHEN {newer} THEN :status ELSE devices.status END,"
    " profile = CASE WHEN {newer} THEN coalesce(:profile, devices.profile)"
    " ELSE devices.profile END,"
    " agent_version = CASE WHEN {newer} THEN coalesce(:agent, devices.agent_version)"
    " ELSE devices.agent_version END,"
    " model_version = CASE WHEN {newer} THEN coalesce(:model, devices.model_version)"
    " ELSE devices.model_version END,"
    " cohorts = CASE WHEN {newer} THEN coalesce(:cohorts, devices.cohorts)"
    " ELSE devices.cohorts END,"
    " state_at = CASE WHEN {newer} THEN :at ELSE devices.state_at END,"
    " policy_version = CASE WHEN {newer} THEN coalesce(:policy, devices.policy_version)"
    " ELSE devices.policy_version END"
).format(newer="(devices.state_at IS NULL OR devices.state_at <= :at)")
"""A device's state (birth, last will) upserted: registered on first sight, updated unless a
newer state is stored already."""

StateItem = tuple[str, State, datetime]
"""(device_id, state, received_at) of one state message."""


def state_order(state: State, received_at: datetime) -> str:
    """The time a state is ordered by: when the device made it (`at`), never later than when
    it was received (a device clock ahead cannot pin a state); a state without `at` (the
    agent's last will, composed at connect time and published by the broker when the device
    is gone) counts from when it was received."""
    at = state.at if state.at is not None and state.at < received_at else received_at
    return format_time(at)


def newest_states(items: Sequence[StateItem]) -> dict[str, tuple[str, State]]:
    """Pure: per device, the state to store of a group: the newest by `state_order`, the
    later arrival on a tie. Returns {device_id: (order, state)} in first-seen order."""
    newest: dict[str, tuple[str, State]] = {}
    for device_id, state, received_at in items:
        order = state_order(state, received_at)
        known = newest.get(device_id)
        if known is None or known[0] <= order:
            newest[device_id] = (order, state)
    return newest


def record_states(store: Session, items: Sequence[StateItem], received_at: datetime) -> int:
    """Group commit of device states (a storm of births): the newest of each device stored,
    all in ONE transaction; returns how many devices it covered."""
    try:
        with store.transaction():
            return _upsert_states(store, items, format_time(received_at))
    except Error as exc:
        raise StoreError(f"cannot record a group of {len(items)} device states: {exc}") from exc


def store_uplink(
    store: Session,
    batches: Sequence[tuple[str, Batch]],
    states: Sequence[StateItem],
    received_at: datetime,
) -> list[StoredBatch]:
    """One group commit of the uplink: batches (`store_batches`) and device states
    (`record_states`) in ONE transaction, all or nothing."""
    now = format_time(received_at)
    try:
        with store.transaction():
            stored = _insert_batches(store, batches, now) if batches else []
            if states:
                _upsert_states(store, states, now)
            return stored
    except Error as exc:
        raise StoreError(
            f"cannot store a group of {len(batches)} batches and {len(states)} states: {exc}"
        ) from exc


def _upsert_states(store: Session, items: Sequence[StateItem], now: str) -> int:
    newest = newest_states(items)
    store.conn.executemany(
        STATE_UPSERT,
        [
            {
                "device": device_id,
                "status": state.status,
                "now": now,
                "profile": state.profile,
                "agent": state.agent_version,
                "model": state.model_version,
                "cohorts": to_text(state.cohorts) if state.cohorts else None,
                "at": order,
                "policy": state.policy_version,
            }
            for device_id, (order, state) in sorted(newest.items())  # one lock order
        ],
    )
    return len(newest)


def record_state(store: Session, device_id: str, state: State, received_at: datetime) -> None:
    """A device's retained state (birth, last will): status, profile, versions, cohorts;
    one transaction (the group commit is `record_states`)."""
    record_states(store, [(device_id, state, received_at)], received_at)


def record_rejection(store: Session, device_id: str, received_at: datetime) -> None:
    """Count one refused message against the device whose topic it came on."""
    now = format_time(received_at)
    try:
        with store.transaction():
            store.conn.execute(ENSURE_DEVICE, [device_id, now, now])
            store.conn.execute(
                "UPDATE devices SET malformed = malformed + 1 WHERE device_id = ?", [device_id]
            )
    except Error as exc:
        raise StoreError(f"cannot count a rejection for {device_id}: {exc}") from exc
