"""The local API at its edges, in-process: non-finite numbers, times at the ends of the
calendar and of a kind's time to live, unknown kinds and wrong attribute types, size limits
that say the limit, and idempotent intake (`Idempotency-Key`, client signal ids)."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent.errors import InvalidInput
from agent.intake.kinds import BUILTIN
from agent.intake.validate import parse_signals
from agent.store import idempotency
from protocol.ids import format_time, utcnow
from tests.support.local_device import SURFACE, Client, Device, running_device

GOOD = {"kind": "app_open", "attrs": {"app": "tv", "category": "games"}}


async def post(client: Client, body: bytes | dict[str, Any], **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        "/v1/signals", data=data, headers={"Content-Type": "application/json", **headers}
    )


async def stored_ids(device: Device) -> list[str]:
    store = device.agent.store
    rows = await store.call(
        lambda: store.thread.conn().execute("SELECT id FROM signals ORDER BY id").fetchall()
    )
    return [r[0] for r in rows]


# ------------------------------------------------------------------ finite numbers


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", "18446744073709551616", "-1e999"]
)
async def test_a_non_finite_number_is_a_400_naming_its_path(
    device: Device, client: Client, literal: str
) -> None:
    raw = (
        b'{"signals": [{"kind": "purchase", "attrs": {"amount": 3}},'
        b' {"kind": "purchase", "attrs": {"price": ' + literal.encode() + b"}}]}"
    )
    response = await post(client, raw)
    assert response.status == 400
    errors = (await response.json())["errors"]
    assert errors[0]["loc"] == "signals.1.attrs.price", errors
    assert literal[:20] in errors[0]["msg"]
    assert await stored_ids(device) == []
    assert device.agent.counters["api_non_finite"] == 1
    assert (await post(client, {"signals": [GOOD]})).status == 202


async def test_a_non_finite_number_from_the_library_is_refused(device: Device) -> None:
    for value in (float("nan"), float("inf"), 2**64):
        with pytest.raises(InvalidInput) as caught:
            await device.agent.accept_signals([{"kind": "purchase", "attrs": {"amount": value}}])
        assert caught.value.errors[0]["loc"] == "signals.0.attrs"
    assert await stored_ids(device) == []


async def test_a_nan_stored_by_an_older_version_never_fails_the_fold_into_aggregates(
    device: Device,
) -> None:
    """Degrading to aggregates read `seconds: NaN` into a NOT NULL column: the uplink died."""
    store = device.agent.store

    def older_row() -> None:
        with store.thread.tx() as tx:
            tx.execute(
                "INSERT INTO signals(id, kind, at, attrs, priority, expires_at, created, size)"
                " VALUES ('old-1', 'content_view', ?, ?, 50, ?, ?, 300)",
                (format_time(utcnow()), '{"seconds": NaN, "category": "games"}', 4e9, 1.0),
            )

    await store.call(older_row)
    folded = await store.call(store.outbox.fold_pending, 3600)
    assert folded == 1
    rows = await store.call(
        lambda: store.thread.conn().execute("SELECT count, seconds FROM aggregates").fetchall()
    )
    assert rows == [(1, 0.0)]


# ------------------------------------------------------------------ time at its edges


@pytest.mark.parametrize(
    "at",
    [
        "0001-01-01T00:00:00+14:00",  # before year 1 in UTC: was a bare 500
        "9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999+00:00",
    ],
)
async def test_times_at_the_ends_of_the_calendar_are_a_400(
    device: Device, client: Client, at: str
) -> None:
    response = await post(client, {"signals": [{"kind": "search", "at": at}]})
    assert response.status == 400, await response.text()
    errors = (await response.json())["errors"]
    assert errors[0]["loc"] == "signals.0.at"
    assert await stored_ids(device) == []


async def test_any_offset_is_accepted_and_stored_in_utc(device: Device, client: Client) -> None:
    now = utcnow().replace(microsecond=0)
    at = (now - timedelta(hours=1)).astimezone().isoformat()
    east = (now - timedelta(hours=1)).astimezone(timezone(timedelta(hours=14)))
    response = await post(
        client,
        {"signals": [{"kind": "search", "at": at}, {"kind": "search", "at": east.isoformat()}]},
    )
    assert response.status == 202, await response.text()
    store = device.agent.store
    ats = await store.call(
        lambda: [r[0] for r in store.thread.conn().execute("SELECT at FROM signals")]
    )
    assert ats == [format_time(now - timedelta(hours=1))] * 2


async def test_a_signal_past_its_time_to_live_is_a_400_naming_the_bound(
    device: Device, client: Client
) -> None:
    ttl = device.agent.settings.profile.policy("app_open").ttl_hours  # 72 h on a tv
    old = format_time(utcnow() - timedelta(hours=ttl + 1))
    response = await post(client, {"signals": [GOOD, {**GOOD, "at": old}]})
    assert response.status == 400
    error = (await response.json())["errors"][0]
    assert error["loc"] == "signals.1.at"
    assert f"{ttl:g} h" in error["msg"] and "app_open" in error["msg"]
    within = format_time(utcnow() - timedelta(hours=ttl - 1))
    assert (await post(client, {"signals": [{**GOOD, "at": within}]})).status == 202


async def test_a_signal_too_far_in_the_future_is_a_400_naming_the_bound(client: Client) -> None:
    ahead = format_time(utcnow() + timedelta(hours=25))
    response = await post(client, {"signals": [{**GOOD, "at": ahead}]})
    assert response.status == 400
    error = (await response.json())["errors"][0]
    assert error["loc"] == "signals.0.at" and "24 h" in error["msg"]
    soon = format_time(utcnow() + timedelta(hours=23))
    assert (await post(client, {"signals": [{**GOOD, "at": soon}]})).status == 202


# ------------------------------------------------------------------ kinds and attributes


async def test_an_unknown_kind_is_a_400_listing_the_known_ones(
    device: Device, client: Client
) -> None:
    response = await post(client, {"signals": [GOOD, {"kind": "door_open"}]})
    assert response.status == 400
    error = (await response.json())["errors"][0]
    assert error["loc"] == "signals.1.kind"
    assert "door_open" in error["msg"] and "app_open" in error["msg"]
    assert await stored_ids(device) == []


@pytest.mark.parametrize(
    ("signal", "loc"),
    [
        ({"kind": "search", "attrs": {"query_len": "long"}}, "signals.0.attrs.query_len"),
        ({"kind": "search", "attrs": {"query_len": 2.5}}, "signals.0.attrs.query_len"),
        ({"kind": "purchase", "attrs": {"amount": "9.99"}}, "signals.0.attrs.amount"),
        ({"kind": "app_open", "attrs": {"category": 7}}, "signals.0.attrs.category"),
        ({"kind": "consumable_level", "attrs": {"level": 1.5}}, "signals.0.attrs.level"),
        ({"kind": "member_tier", "attrs": {"tier": True}}, "signals.0.attrs.tier"),
        ({"kind": "member_tier", "attrs": {"tier": 9}}, "signals.0.attrs.tier"),
    ],
)
async def test_a_documented_attribute_of_the_wrong_type_is_a_400(
    client: Client, signal: dict[str, Any], loc: str
) -> None:
    response = await post(client, {"signals": [signal]})
    assert response.status == 400
    assert (await response.json())["errors"][0]["loc"] == loc


async def test_a_profile_declares_custom_kinds_with_typed_attributes(tmp_path: Path) -> None:
    custom = {"signals": {"door_open": {"priority": 30, "attrs": {"door": "string"}}}}
    async with running_device(tmp_path, overrides=custom) as device:
        await device.agent.accept_signals([{"kind": "door_open", "attrs": {"door": "front"}}])
        with pytest.raises(InvalidInput) as caught:
            await device.agent.accept_signals([{"kind": "door_open", "attrs": {"door": 1}}])
        assert caught.value.errors[0]["loc"] == "signals.0.attrs.door"
        assert device.agent.parts.intake.kinds.custom == ("door_open",)


async def test_413_answers_say_the_limit(device: Device, client: Client) -> None:
    limit = device.agent.settings.max_request_items
    response = await post(client, {"signals": [GOOD] * (limit + 1)})
    assert response.status == 413
    assert str(limit) in (await response.json())["errors"][0]["msg"]
    max_bytes = device.agent.settings.max_request_bytes
    response = await client.post(
        "/v1/signals",
        data=io.BytesIO(b" " * (max_bytes + 1)),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    assert str(max_bytes) in (await response.json())["errors"][0]["msg"]


# ------------------------------------------------------------------ idempotent intake


async def test_a_retry_with_the_same_key_and_body_gets_the_original_answer(
    device: Device, client: Client
) -> None:
    body = {"signals": [GOOD, GOOD]}
    first = await post(client, body, **{"Idempotency-Key": "req-1"})
    assert first.status == 202
    answer = await first.json()
    again = await post(client, body, **{"Idempotency-Key": "req-1"})
    assert again.status == 202 and await again.json() == answer
    assert again.headers["Idempotent-Replayed"] == "true"
    assert sorted(await stored_ids(device)) == sorted(answer["ids"])  # nothing new
    # the same body spaced and ordered otherwise is the same request
    reordered = json.dumps({"signals": [{"attrs": GOOD["attrs"], "kind": "app_open"}] * 2})
    third = await post(client, reordered.encode(), **{"Idempotency-Key": "req-1"})
    assert await third.json() == answer
    assert device.agent.counters["api_replayed"] == 2
    # without a key (or with another), a new request
    assert (await post(client, body, **{"Idempotency-Key": "req-2"})).status == 202
    assert len(await stored_ids(device)) == 4


async def test_the_same_key_with_another_body_is_a_409(device: Device, client: Client) -> None:
    assert (await post(client, {"signals": [GOOD]}, **{"Idempotency-Key": "k"})).status == 202
    response = await post(client, {"signals": [GOOD, GOOD]}, **{"Idempotency-Key": "k"})
    assert response.status == 409
    assert (await response.json())["errors"][0]["loc"] == "Idempotency-Key"
    assert len(await stored_ids(device)) == 1


@pytest.mark.parametrize("key", ["", "k" * 65, "clé"])
async def test_a_bad_key_is_a_400(client: Client, key: str) -> None:
    response = await post(client, {"signals": [GOOD]}, **{"Idempotency-Key": key})
    assert response.status == 400
    assert (await response.json())["errors"][0]["loc"] == "Idempotency-Key"


async def test_a_crash_between_the_commit_and_the_answer_is_answered_on_retry(
    device: Device, client: Client
) -> None:
    """The key is committed in the transaction of the rows: a request whose answer was lost
    (the process died after COMMIT) is answered from it, and nothing is stored twice."""
    body = {"signals": [GOOD, GOOD, GOOD]}
    parsed = parse_signals(body, max_items=10)
    with idempotency.intent("signals", "lost-1", idempotency.fingerprint(body)):
        committed = await device.agent.accept_parsed(parsed)
    # ... the answer never left: the app retries
    retry = await post(client, body, **{"Idempotency-Key": "lost-1"})
    assert retry.status == 202
    assert (await retry.json())["ids"] == committed
    assert sorted(await stored_ids(device)) == sorted(committed)


async def test_a_refused_request_commits_no_key(device: Device, client: Client) -> None:
    bad = {"signals": [{"kind": "door_open"}]}
    assert (await post(client, bad, **{"Idempotency-Key": "k1"})).status == 400
    assert await device.agent.find_request("signals", "k1") is None


async def test_outcomes_and_claims_honour_the_key(device: Device, client: Client) -> None:
    await device.agent.set_consent({"analytics": True, "personalization": True, "marketing": True})
    await device.transports.last.deliver("offers", device.bundle([("o1", 0.1, 50)]))
    outcome = {"offer_id": "o1", "kind": "click", "surface": SURFACE}
    headers = {"Idempotency-Key": "click-1"}
    first = await client.post("/v1/outcomes", json=outcome, headers=headers)
    assert first.status == 202
    again = await client.post("/v1/outcomes", json=outcome, headers=headers)
    assert again.status == 202 and await again.json() == await first.json()
    assert device.agent.store.counters.outcome_rows == 1
    other = await client.post("/v1/outcomes", json={**outcome, "kind": "dismiss"}, headers=headers)
    assert other.status == 409
    # a claim: o1 is not limited, so the claim is refused (and no key is kept)
    claim = await client.post(
        "/v1/claims", json={"offer_id": "o1"}, headers={"Idempotency-Key": "c"}
    )
    assert claim.status == 409
    assert await device.agent.find_request("claims", "c") is None


async def test_keys_expire_after_24_hours_and_the_table_is_bounded(device: Device) -> None:
    store = device.agent.store
    for n in range(3):
        body = {"signals": [GOOD]}
        with idempotency.intent("signals", f"k{n}", idempotency.fingerprint(body)):
            await device.agent.accept_signals(body["signals"])

    def age(key: str, seconds: float) -> None:
        with store.thread.tx() as tx:
            tx.execute("UPDATE idempotency SET created = created - ? WHERE key = ?", (seconds, key))

    await store.call(age, "k0", idempotency.TTL_S + 1)
    assert await device.agent.find_request("signals", "k0") is None  # expired: not replayed
    assert await device.agent.find_request("signals", "k1") is not None
    await store.call(store.idempotency.prune)  # (the maintenance loop may have pruned it too)
    assert await store.call(store.idempotency.count) == 2

    def flood() -> None:
        with store.thread.tx() as tx:
            tx.executemany(
                "INSERT INTO idempotency(route, key, fingerprint, status, answer, created)"
                " VALUES ('signals', ?, 'f', 202, '{}', ?)",
                [(f"flood-{i}", store.clock() + i) for i in range(idempotency.MAX_KEYS + 5)],
            )

    await store.call(flood)
    await store.call(store.idempotency.prune)
    assert await store.call(store.idempotency.count) == idempotency.MAX_KEYS


async def test_client_signal_ids_are_kept_and_deduplicated(device: Device, client: Client) -> None:
    body = {"signals": [{**GOOD, "id": "app-sig-1"}, {**GOOD, "id": "app-sig-2"}, GOOD]}
    first = await post(client, body)
    assert first.status == 202
    ids = (await first.json())["ids"]
    assert ids[:2] == ["app-sig-1", "app-sig-2"]
    again = await post(
        client, {"signals": [{**GOOD, "id": "app-sig-1"}, {**GOOD, "id": "app-sig-1"}]}
    )
    assert again.status == 202 and (await again.json())["ids"] == ["app-sig-1", "app-sig-1"]
    assert len(await stored_ids(device)) == 3
    assert device.agent.counters["signals_duplicate"] == 2
    bad = await post(client, {"signals": [{**GOOD, "id": "not an id!"}]})
    assert bad.status == 400 and (await bad.json())["errors"][0]["loc"] == "signals.0.id"


def test_the_store_refuses_a_second_key_row_in_one_transaction(tmp_path: Path) -> None:
    """The key row is a primary key: a concurrent retry's commit fails, is looked up again."""
    db = sqlite3.connect(tmp_path / "x.db")
    db.execute(
        "CREATE TABLE idempotency (route TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT"
        " NOT NULL, status INTEGER NOT NULL, answer TEXT NOT NULL, created REAL NOT NULL,"
        " PRIMARY KEY (route, key))"
    )
    for attempt in range(2):
        with idempotency.intent("signals", "k", "f") as current:
            idempotency.answer_with(202, {"n": attempt})
            if attempt == 0:
                idempotency.record(db, 1.0)
                assert current.recorded
            else:
                with pytest.raises(idempotency.DuplicateRequest):
                    idempotency.record(db, 1.0)
    db.close()


def test_the_documented_table_is_the_one_the_agent_checks() -> None:
    """docs/agent-api.md, "Signals": each kind with its attributes and types, as enforced."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "agent-api.md").read_text()
    table = doc.split("## Signals", 1)[1].split("\n\n", 2)[1]
    documented: dict[str, dict[str, str]] = {}
    for line in table.splitlines()[2:]:
        kind, attrs = (cell.strip() for cell in line.strip("|").split("|"))
        documented[kind.strip("`")] = {
            part.split()[0].strip("`"): part.split()[1] for part in attrs.split(", ")
        }
    enforced = {
        kind: {name: rule.type for name, rule in rules.items()} for kind, rules in BUILTIN.items()
    }
    assert documented == enforced


async def test_an_outcome_whose_answer_was_lost_is_answered_on_retry(
    device: Device, client: Client
) -> None:
    await device.agent.set_consent({"analytics": True, "personalization": True, "marketing": True})
    await device.transports.last.deliver("offers", device.bundle([("o1", 0.1, 50)]))
    outcome = {"offer_id": "o1", "kind": "impression", "surface": SURFACE}
    with idempotency.intent("outcomes", "lost-o", idempotency.fingerprint(outcome)):
        committed = await device.agent.record_outcome_detail("o1", "impression", SURFACE)
    retry = await client.post("/v1/outcomes", json=outcome, headers={"Idempotency-Key": "lost-o"})
    assert retry.status == 202 and (await retry.json())["id"] == committed["id"]
    assert device.agent.store.counters.outcome_rows == 1
