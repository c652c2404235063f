"""Hostile uplink payloads, generated (hypothesis) and hand-made (zlib bomb, deep nesting,
wrong types, huge arrays, wrong device id): counted per reason and device, never a crash,
never stored under another device. Real SQLite through the gateway's Ingestor; one live
run through a real Mosquitto into a running gateway."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_gateway.db import rows
from cloud_gateway.db.devices import device_facts, get_device
from cloud_gateway.db.store import Database
from cloud_gateway.ingest.service import AckBatcher, Ingestor, Parsed, Rejected
from protocol import codec
from protocol.envelopes import Ack, Batch, Refusal, Signal
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import gateway
from tests.support.waiting import eventually

TOPICS = Topics("edgemart/v1")
SIGNER = Signer.generate("k-test")
VICTIM, OTHER = "tv-victim-01", "tv-other-02"


def valid(device: str = VICTIM, seq: int = 1, n: int = 2) -> dict[str, Any]:
    now = utcnow()
    batch = Batch(
        device_id=device,
        seq=seq,
        sent_at=now,
        agent_version="0.1.0",
        signals=[Signal(id=new_id(), kind="search", at=now, attrs={"q": 1}) for _ in range(n)],
    )
    return batch.to_wire()


def hand_made() -> list[tuple[str, bytes, str]]:
    """(name, payload, expected reason) for the topic of VICTIM."""
    deep = b'{"v":1,"signals":' + b"[" * 5000 + b"]" * 5000 + b"}"
    wrong_types = {**valid(), "seq": "seven", "signals": {"id": 1}}
    huge_array = {**valid(), "signals": [valid()["signals"][0]] * 2001}
    wrong_device = valid(device=OTHER, seq=99)
    return [
        ("zlib bomb", zlib.compress(b" " * (64 * 1024 * 1024), 9), "too_large"),
        ("deep nesting", deep, "malformed"),
        ("deep nesting, zlib", zlib.compress(deep), "malformed"),
        ("wrong types", json.dumps(wrong_types).encode(), "invalid"),
        ("huge array", zlib.compress(json.dumps(huge_array).encode()), "invalid"),
        ("huge payload", b'{"v":1,"x":"' + b"a" * 300_000 + b'"}', "too_large"),
        ("wrong device id", json.dumps(wrong_device).encode(), "wrong_device"),
        ("unknown version", json.dumps({**valid(), "v": 2}).encode(), "unsupported_version"),
        ("not JSON", b"{\xff\xfe not json", "malformed"),
        ("broken zlib", b"\x78\x9c garbage", "malformed"),
        ("empty", b"", "malformed"),
        ("a list", b"[1,2,3]", "malformed"),
        ("NaN seq", b'{"v":1,"seq":NaN}', "non_finite"),
        *non_finite_attrs(),
        *times_out_of_range(),
        ("lone surrogate", with_attr("q", '"\\ud800"'), "invalid"),
        ("NUL in a string", with_attr("q", '"a\\u0000b"'), "invalid"),
    ]


def with_attr(name: str, literal: str, compress: bool = False) -> bytes:
    """A valid batch of VICTIM whose first signal's attr `name` is the JSON `literal`."""
    doc = valid()
    doc["signals"][0]["attrs"][name] = "@@"
    raw = json.dumps(doc).replace('"@@"', literal).encode()
    return zlib.compress(raw) if compress else raw


def non_finite_attrs() -> list[tuple[str, bytes, str]]:
    """Numbers no store holds, in a signal's attrs (before issue 13 a NaN there was stored and
    failed every targeted launch): refused as `non_finite`, plain and compressed."""
    literals = ("NaN", "Infinity", "-Infinity", "1e400", "-1E+309", "9" * 20, "-" + "9" * 30)
    return [
        (f"attr {lit[:12]}{' zlib' * z}", with_attr("price", lit, z), "non_finite")
        for lit in literals
        for z in (False, True)
    ]


def times_out_of_range() -> list[tuple[str, bytes, str]]:
    """RFC 3339 times that validate but cannot be moved to UTC: refused as `invalid`."""
    out = []
    for field, moment in (
        ("at", "0001-01-01T00:00:00+14:00"),
        ("at", "9999-12-31T23:59:59.999-00:01"),
        ("sent_at", "0001-01-01T13:59:59+14:00"),
    ):
        doc = valid()
        if field == "at":
            doc["signals"][1]["at"] = moment
        else:
            doc["sent_at"] = moment
        out.append((f"{field} {moment}", json.dumps(doc).encode(), "invalid"))
    return out


class Harness:
    """The gateway's real Ingestor over a real SQLite file; publishes are recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runner = asyncio.Runner()
        self.counters: Counter[str] = Counter()
        self.published: list[tuple[str, bytes]] = []
        self.db = self.runner.run(Database(path).open())

        def send_ack(topic: str, payload: bytes) -> None:
            self.published.append((topic, payload))

        self.acks = AckBatcher(TOPICS, send_ack, self.counters, 0, signer=SIGNER)
        self.ingestor = Ingestor(
            TOPICS,
            self.db,
            acks=self.acks,
            counters=self.counters,
        )

    def handle(self, topic: str, payload: bytes) -> Parsed | Rejected | Any:
        return self.runner.run(self.ingestor.handle(topic, payload))

    def sent(self) -> list[Ack]:
        """The acks sent so far (after a flush of what is queued)."""
        self.runner.run(self.acks.flush())
        unsigned = dict.fromkeys(("device_id", "expires_at", "kid", "sig"))
        return [
            Ack.model_validate_json(payload).model_copy(update=unsigned)
            for _, payload in self.published
        ]

    def devices(self) -> dict[str, int]:
        with closing(sqlite3.connect(self.path)) as db:
            return {d: m for d, m in db.execute("SELECT device_id, malformed FROM devices")}

    def signals_of(self, device: str) -> int:
        with closing(sqlite3.connect(self.path)) as db:
            row = db.execute("SELECT count(*) FROM signals WHERE device_id = ?", [device])
            return int(row.fetchone()[0])

    def close(self) -> None:
        self.runner.run(self.db.close())
        self.runner.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "gateway.sqlite3")
    yield h
    h.close()


@pytest.mark.parametrize("case", hand_made(), ids=lambda c: c[0])
def test_hand_made_hostile_payload_is_counted_and_stored_nowhere(
    harness: Harness, case: tuple[str, bytes, str]
) -> None:
    _, payload, reason = case
    result = harness.handle(TOPICS.batch(VICTIM), payload)
    assert isinstance(result, Rejected)
    assert result.reason == reason
    assert harness.counters[f"rejected_{reason}"] == 1
    assert harness.devices() == {VICTIM: 1}  # counted against the topic's device only
    assert harness.signals_of(VICTIM) == 0
    sent = harness.sent()
    assert [a.acks for a in sent if a.acks] == []  # nothing acked
    refused = [r for a in sent for r in a.refused or ()]  # refused for good: it may be dropped
    assert all((r.seq, r.reason) == (1, reason) for r in refused), refused
    assert len(refused) <= 1
    # The ingest loop goes on: the next good batch is stored and acked.
    good = harness.handle(TOPICS.batch(VICTIM), codec.encode_dict(valid(seq=5)))
    assert isinstance(good, Parsed)
    assert harness.signals_of(VICTIM) == 2
    assert harness.runner.run(harness.db.call(get_device, OTHER)) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)
FIELDS = ["v", "device_id", "seq", "sent_at", "agent_version", "signals", "aggregates", "stats"]


@st.composite
def mutated_batches(draw: st.DrawFn) -> bytes:
    """A valid batch with some fields replaced by arbitrary JSON, maybe compressed."""
    doc = valid(device=draw(st.sampled_from([VICTIM, OTHER])), seq=draw(st.integers(1, 50)))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        doc[name] = draw(json_values)
    raw = json.dumps(doc).encode()
    return zlib.compress(raw) if draw(st.booleans()) else raw


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    payload=st.binary(max_size=400)
    | mutated_batches()
    | json_values.map(lambda v: json.dumps(v).encode())
)
def test_generated_payloads_never_crash_and_never_land_under_another_device(
    harness: Harness, payload: bytes
) -> None:
    result = harness.handle(TOPICS.batch(VICTIM), payload)
    assert isinstance(result, Parsed | Rejected)
    if isinstance(result, Parsed):
        assert isinstance(result.message, Batch)
        assert result.message.device_id == VICTIM
    assert OTHER not in harness.devices()
    assert harness.signals_of(OTHER) == 0
    handled = harness.counters["messages_received"]
    rejected = sum(v for k, v in harness.counters.items() if k.startswith("rejected_"))
    stored = harness.counters["batches_stored"] + harness.counters["batches_duplicate"]
    assert rejected + stored == handled  # every message is either stored once or counted


async def test_hostile_payloads_through_mosquitto_leave_the_gateway_serving(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    async with gateway(tmp_path, mosquitto) as gw:
        topics = Topics(gw.settings.topic_root)
        cases = hand_made()
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="hostile-1") as client:
            for _, payload, _ in cases:
                await client.publish(topics.batch(VICTIM), payload, qos=1)
            await client.publish(topics.batch(VICTIM), codec.encode_dict(valid(seq=7)), qos=1)
        await eventually(lambda: gw.counters["batches_stored"] == 1, what="the good batch")
        expected = Counter(reason for _, _, reason in cases)
        for reason, n in expected.items():
            assert gw.counters[f"rejected_{reason}"] == n, reason
        view = await gw.db.call(get_device, VICTIM)
        assert view is not None and view["malformed"] == len(cases)
        assert view["signals_stored"] == 2
        assert await gw.db.call(get_device, OTHER) is None


@pytest.mark.parametrize(
    ("payload", "refusal"),
    [
        (
            with_attr("price", "NaN"),
            Refusal(seq=1, reason="non_finite", field="signals.0.attrs.price"),
        ),
        (
            with_attr("price", "1e400", True),
            Refusal(seq=1, reason="non_finite", field="signals.0.attrs.price"),
        ),
        (times_out_of_range()[0][1], Refusal(seq=1, reason="invalid", field="signals.1.at")),
        (times_out_of_range()[2][1], Refusal(seq=1, reason="invalid", field="sent_at")),
        (
            json.dumps({**valid(), "agent_version": "x" * 40}).encode(),
            Refusal(seq=1, reason="invalid", field="agent_version"),
        ),
        (
            with_attr("q", '"\\u0000"', True),
            Refusal(seq=1, reason="invalid", field="signals.0.attrs.q"),
        ),
    ],
    ids=["NaN", "1e400 zlib", "year 1 east", "sent_at year 1", "too long", "NUL"],
)
def test_a_batch_refused_for_good_is_answered_with_a_refusal_naming_the_field(
    harness: Harness, payload: bytes, refusal: Refusal
) -> None:
    result = harness.handle(TOPICS.batch(VICTIM), payload)
    assert isinstance(result, Rejected)
    assert harness.sent() == [Ack(acks=[], refused=[refusal])]
    assert harness.counters["refusals_sent"] == 1


def test_no_refusal_for_what_a_resend_may_fix_or_a_batch_without_a_seq(harness: Harness) -> None:
    for payload in (
        b"{\xff\xfe not json",  # malformed: maybe damaged on the way
        json.dumps({**valid(), "seq": "seven"}).encode(),  # no seq to name
        b'{"v":1,"seq":NaN}',
        json.dumps({**valid(), "new_field": 1}).encode(),  # a newer gateway may take it
    ):
        assert isinstance(harness.handle(TOPICS.batch(VICTIM), payload), Rejected)
    assert harness.sent() == []


def test_times_at_the_edges_of_the_calendar_in_utc_are_stored_and_read(harness: Harness) -> None:
    doc = valid()
    doc["signals"][0].update(kind="member_tier", at="0001-01-01T00:00:00Z", attrs={"tier": 1})
    doc["signals"][1].update(at="9999-12-31T23:59:59.999999-00:00")
    doc["sent_at"] = "9999-12-31T23:59:59+00:00"
    doc["aggregates"] = [{"window": "1d:9999-12-31", "key": "member_tier/tier=2", "count": 1}]
    assert isinstance(harness.handle(TOPICS.batch(VICTIM), json.dumps(doc).encode()), Parsed)
    assert harness.signals_of(VICTIM) == 2
    facts = harness.runner.run(harness.db.call(device_facts, VICTIM))
    assert [f.member_tier for f in facts] == [1]  # the window past the calendar is skipped


# ---------------------------------------------------------------- hostile values (issue 13)

EDGE_TIMES = (
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T10:00:00+14:00",
    "2026-02-29T00:00:00Z",
    "2026-12-06T25:00:00Z",
    "2026-12-06T06:00:00+24:00",
    "2026-12-06T06:00:00",
    "1970-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z",
)
ODD_TEXT = ("\ud800", "\udfff", "\x00", "\u202e", "\ufeff", "𝕏" * 300, "é", "\U0010ffff")
hostile_values = (
    st.floats()  # NaN and infinities: json.dumps writes them as literals
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.sampled_from(EDGE_TIMES + ODD_TEXT)
    | st.text(max_size=10)
    | st.sampled_from([1e308, -1e308, 5e-324, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1])
)
PLACES = ("sent_at", "signals.0.at", "signals.0.attrs.x", "signals.0.kind", "seq", "model_version")


@st.composite
def hostile_batches(draw: st.DrawFn) -> bytes:
    """A valid batch of VICTIM with hostile values at places a value is read from."""
    doc = valid(seq=draw(st.integers(1, 50)))
    for place in draw(st.lists(st.sampled_from(PLACES), min_size=1, max_size=3)):
        *parents, leaf = place.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[leaf] = draw(hostile_values)
    raw = json.dumps(doc).encode()  # NaN, Infinity and lone surrogates as JSON writes them
    return zlib.compress(raw) if draw(st.booleans()) else raw


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=hostile_batches())
def test_hostile_values_are_stored_or_refused_never_a_crash_or_a_stuck_batch(
    harness: Harness, payload: bytes
) -> None:
    result = harness.handle(TOPICS.batch(VICTIM), payload)
    assert isinstance(result, Parsed | Rejected)
    handled = harness.counters["messages_received"]
    rejected = sum(v for k, v in harness.counters.items() if k.startswith("rejected_"))
    stored = harness.counters["batches_stored"] + harness.counters["batches_duplicate"]
    assert harness.counters["store_errors"] == 0  # what was accepted could be stored
    assert rejected + stored == handled
    if isinstance(result, Rejected):
        assert result.reason in ("non_finite", "invalid", "malformed"), result
    with closing(sqlite3.connect(harness.path)) as db:
        kept = [str(row[0]) for row in db.execute("SELECT attrs FROM signals")]
    for attrs in kept:  # no NaN or Infinity literal stored (the string "NaN" is a string)
        json.loads(attrs, parse_constant=_no_constant)


def _no_constant(name: str) -> None:
    raise AssertionError(f"a non-finite number was stored: {name}")


def test_a_batch_the_store_fails_on_by_a_bug_costs_only_itself(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value no check foresaw that makes storing raise (here: formatting one time raises,
    as `format_time` did for year 1 east of UTC before issue 13): the group falls back to
    one by one, the poisoned batch is not acked, the ones beside it are."""

    def poisoned(moment: datetime) -> str:
        if moment.year == 1234:
            raise OverflowError("date value out of range")
        return format_time(moment)

    monkeypatch.setattr(rows, "format_time", poisoned)
    bad = valid(seq=2)
    bad["signals"][0]["at"] = "1234-05-06T07:08:09Z"
    for doc in (valid(seq=1), bad, valid(seq=3)):  # queued together: one group
        harness.runner.run(harness.ingestor.feed(TOPICS.batch(VICTIM), json.dumps(doc).encode()))
    harness.runner.run(harness.ingestor.commit_waiting())
    assert [a.acks for a in harness.sent()] == [[1, 3]]
    assert harness.counters["group_commits_failed"] == 1
    assert harness.counters["store_errors"] == 1
    assert harness.signals_of(VICTIM) == 4
