"""Codec: round trips, zlib, hostile bytes refused with a reason, strict and tolerant readers."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.envelopes import Ack, Aggregate, Batch, Offer, OfferBundle, Outcome, Signal
from protocol.errors import (
    InvalidMessage,
    MalformedPayload,
    NonFiniteNumber,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedVersion,
)

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
attr_values = st.one_of(
    st.text(max_size=40),
    st.integers(-(2**31), 2**31),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
signals = st.builds(
    Signal,
    id=st.uuids().map(str),
    kind=names,
    at=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ).map(lambda d: d.replace(microsecond=(d.microsecond // 1000) * 1000)),
    attrs=st.dictionaries(names, attr_values, max_size=5),
)


def _batch(**kw: object) -> Batch:
    base: dict[str, object] = {
        "device_id": "tv-0001",
        "seq": 1,
        "sent_at": NOW,
        "agent_version": "0.1.0",
    }
    base.update(kw)
    return Batch.model_validate(base)


@given(st.lists(signals, max_size=30), st.integers(0, 2**40), st.sampled_from([None, True, False]))
@settings(max_examples=150, deadline=None)
def test_batch_round_trips_through_the_wire(
    sigs: list[Signal], seq: int, compress: bool | None
) -> None:
    batch = _batch(signals=sigs, seq=seq)
    payload = codec.encode(batch, compress=compress)
    assert codec.decode(payload, Batch, allow_zlib=True) == batch


def test_auto_compression_only_when_it_saves_bytes() -> None:
    small = Ack(acks=[1])
    assert codec.encode(small, compress=None) == b'{"v":1,"acks":[1]}'
    big = _batch(
        signals=[
            Signal(
                id=f"id-{i}", kind="app_open", at=NOW, attrs={"app": "video", "category": "games"}
            )
            for i in range(200)
        ]
    )
    packed = codec.encode(big, compress=None)
    assert packed[:1] != b"{"
    assert len(packed) < len(codec.encode(big)) / 5


def test_outcomes_and_aggregates_round_trip() -> None:
    batch = _batch(
        outcomes=[
            Outcome(
                id="o1",
                offer_id="f1",
                campaign_id="c1",
                kind="click",
                at=NOW,
                surface="tv_home_banner",
                score=0.42,
                model_version=1,
            )
        ],
        aggregates=[Aggregate(window="1h:2026-11-27T06", key="category:games", count=3)],
    )
    assert codec.decode(codec.encode(batch), Batch) == batch


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", MalformedPayload),
        (b"[1,2]", MalformedPayload),
        (b'{"v":1', MalformedPayload),
        (b"\xff\xfe{}", MalformedPayload),
        (b'{"v":2,"acks":[1]}', UnsupportedVersion),
        (b'{"v":true,"acks":[1]}', UnsupportedVersion),
        (b'{"acks":[1]}', UnsupportedVersion),
        (b'{"v":1,"acks":"one"}', InvalidMessage),
        (b'{"v":1,"acks":[1],"extra":1}', InvalidMessage),
        (b'{"v":1,"acks":[-1]}', InvalidMessage),
        (b'{"v":1,"acks":[1]' + b" " * (300 * 1024) + b"}", PayloadTooLarge),
    ],
)
def test_hostile_payloads_are_refused_with_a_reason(payload: bytes, error: type) -> None:
    with pytest.raises(error) as info:
        codec.decode(payload, Ack)
    assert isinstance(info.value, ProtocolError)
    assert info.value.reason


def test_zlib_bomb_stops_at_the_bound() -> None:
    bomb = zlib.compress(b"{" + b" " * (100 * 1024 * 1024) + b"}", 9)
    assert len(bomb) < codec.MAX_COMPRESSED
    with pytest.raises(PayloadTooLarge):
        codec.decode(bomb, Batch, allow_zlib=True)


def test_zlib_refused_where_not_allowed_and_truncated_stream_refused() -> None:
    packed = zlib.compress(b'{"v":1,"acks":[1]}')
    with pytest.raises(MalformedPayload):
        codec.decode(packed, Ack)
    with pytest.raises(MalformedPayload):
        codec.decode(packed[:-4], Ack, allow_zlib=True)


def test_deep_nesting_refused() -> None:
    deep = '{"v":1,"x":' + "[" * 50 + "]" * 50 + "}"
    with pytest.raises(MalformedPayload, match="nests deeper"):
        codec.decode_object(deep.encode())


def test_field_errors_name_the_path() -> None:
    obj = json.loads(codec.encode(_batch(signals=[Signal(id="a", kind="app_open", at=NOW)])))
    obj["signals"][0]["kind"] = "Not A Name!"
    with pytest.raises(InvalidMessage) as info:
        codec.validate(obj, Batch)
    assert info.value.errors[0]["loc"] == "signals.0.kind"


def test_naive_or_offsetless_times_refused() -> None:
    obj = {
        "v": 1,
        "device_id": "tv-0001",
        "seq": 1,
        "sent_at": "2026-11-27T06:00:00",
        "agent_version": "x",
    }
    with pytest.raises(InvalidMessage, match="sent_at"):
        codec.validate(obj, Batch)
    obj["sent_at"] = (NOW + timedelta(hours=1)).isoformat()
    assert codec.validate(obj, Batch).sent_at == NOW + timedelta(hours=1)


# ------------------------------------------------ tolerant reading (what a device reads)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)


@given(st.dictionaries(names.filter(lambda n: n not in Ack.model_fields), JSON, max_size=4))
@settings(max_examples=150, deadline=None)
def test_tolerant_reader_ignores_whatever_a_newer_gateway_adds(extra: dict[str, object]) -> None:
    known = {"v": 1, "acks": [3, 4], "outbox_id": "ob-1"}
    ack, unknown = codec.validate_tolerant({**known, **extra}, Ack)
    assert ack == codec.validate(known, Ack)
    assert sorted(unknown) == sorted(extra)


def test_unknown_fields_are_named_at_any_depth_and_the_strict_reader_still_refuses_them() -> None:
    offer = Offer(
        id="o-1",
        campaign_id="c-1",
        type="coupon",
        title="Filter -30%",
        category="purifier_filter",
        surfaces=["tv_home_banner"],
        starts_at=NOW,
        expires_at=NOW + timedelta(days=1),
    )
    wire = OfferBundle(id="b-1", issued_at=NOW, expires_at=NOW, offers=[offer]).to_wire()
    wire["channel"] = "beta"
    wire["offers"][0]["badge"] = {"text": "new", "color": "#f00"}
    wire["offers"][0]["targeting"] = {"profiles": ["tv"], "min_age": 18}
    bundle, unknown = codec.validate_tolerant(wire, OfferBundle)
    assert sorted(unknown) == ["channel", "offers.0.badge", "offers.0.targeting.min_age"]
    assert bundle.offers[0].title == "Filter -30%"
    assert bundle.offers[0].targeting is not None
    assert bundle.offers[0].targeting.profiles == ["tv"]
    with pytest.raises(InvalidMessage, match="badge"):  # what the gateway uses on the uplink
        codec.validate(wire, OfferBundle)


def test_tolerant_reader_refuses_wrong_known_fields_naming_only_those() -> None:
    with pytest.raises(InvalidMessage) as info:
        codec.validate_tolerant({"v": 1, "acks": [-1], "window_s": 30}, Ack)
    assert [e["loc"] for e in info.value.errors] == ["acks.0"]
    with pytest.raises(InvalidMessage):
        codec.validate_tolerant({"v": 1, "window_s": 30}, Ack)  # a required field missing


@pytest.mark.parametrize(
    ("text", "path", "literal"),
    [
        ('{"a": [1, {"price": NaN}]}', "a.1.price", "NaN"),
        ('{"x": 1e400}', "x", "1e400"),
        ('{"x": -1e400}', "x", "-1e400"),
        ('{"s": [Infinity]}', "s.0", "Infinity"),
        ('{"n": 9223372036854775808}', "n", "9223372036854775808"),
        ("-Infinity", "(root)", "-Infinity"),
    ],
)
def test_loads_finite_names_the_first_non_finite_number(text: str, path: str, literal: str) -> None:
    with pytest.raises(NonFiniteNumber) as caught:
        codec.loads_finite(text)
    assert (caught.value.path, caught.value.literal) == (path, literal)


def test_loads_finite_keeps_finite_numbers_and_strings() -> None:
    text = '{"a": [1.5, -2, 9223372036854775807, -9223372036854775808, "NaN", 1e308]}'
    assert codec.loads_finite(text) == json.loads(text)


def test_a_nan_in_an_uplink_payload_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match=r"signals\.0\.attrs\.p: NaN"):
        codec.decode_object(b'{"v": 1, "signals": [{"attrs": {"p": NaN}}]}')
