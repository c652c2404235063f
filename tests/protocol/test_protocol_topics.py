"""Topics: the fixed names of PROTOCOL.md, parsing, and refusal of ids that could escape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.topics import DEVICE_ID_RE, Topics

T = Topics()


def test_fixed_topic_names() -> None:
    assert T.batch("tv-0001") == "edgemart/v1/dev/tv-0001/up/batch"
    assert T.claim_up("tv-0001") == "edgemart/v1/dev/tv-0001/up/claim"
    assert T.state("tv-0001") == "edgemart/v1/dev/tv-0001/state"
    assert T.ack("tv-0001") == "edgemart/v1/dev/tv-0001/down/ack"
    assert T.offers("tv-0001") == "edgemart/v1/dev/tv-0001/down/offers"
    assert T.claim_down("tv-0001") == "edgemart/v1/dev/tv-0001/down/claim"
    assert T.cmd("tv-0001") == "edgemart/v1/dev/tv-0001/down/cmd"
    assert T.cohort_offers("profile:tv") == "edgemart/v1/cohort/profile:tv/offers"
    assert T.model_manifest("tv") == "edgemart/v1/models/tv/manifest"
    assert T.keys() == "edgemart/v1/keys"
    assert T.gateway_filters("gateway")[0] == "$share/gateway/edgemart/v1/dev/+/up/#"


@pytest.mark.parametrize("bad", ["a", "TV-1", "tv/1", "tv+1", "tv#", "-tv1", "x" * 65, "tv 1"])
def test_bad_device_ids_never_make_topics(bad: str) -> None:
    with pytest.raises(ValueError, match="device_id"):
        T.batch(bad)


@given(st.from_regex(DEVICE_ID_RE, fullmatch=True))
def test_uplink_parse_round_trip(device_id: str) -> None:
    for topic, kind in (
        (T.batch(device_id), "batch"),
        (T.claim_up(device_id), "claim"),
        (T.state(device_id), "state"),
    ):
        parsed = T.parse_uplink(topic)
        assert parsed is not None
        assert (parsed.device_id, parsed.kind) == (device_id, kind)


@given(st.text(max_size=80))
def test_parse_never_raises(topic: str) -> None:
    T.parse_uplink(topic)
    T.parse_downlink(topic)


def test_downlink_parse() -> None:
    assert T.parse_downlink(T.ack("tv-0001")) == ("ack", "tv-0001")
    assert T.parse_downlink(T.cohort_offers("all")) == ("cohort_offers", "all")
    assert T.parse_downlink(T.model_manifest("tv")) == ("manifest", "tv")
    assert T.parse_downlink(T.keys()) == ("keys", "")
    assert T.parse_downlink("edgemart/v1/dev/tv-0001/up/batch") is None
    assert T.parse_uplink("edgemart/v1/dev/TV/up/batch") is None
