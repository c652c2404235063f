"""Why a device still holds signals at the end of a fleet run, as the report says it."""

from __future__ import annotations

from simulators.fleet import why_undelivered

UP = {"link": "connected", "broker": "mqtt://b:1", "accounting": {}, "disk": {"full": False}}


def test_each_reason_a_device_did_not_drain_is_named() -> None:
    assert why_undelivered({**UP, "link": "backing_off"}) == "link backing_off (mqtt://b:1)"
    holding = {**UP, "accounting": {"holding": True, "uplink_bytes_today": 9000}}
    assert "over budget" in why_undelivered(holding)
    no_consent = {**UP, "consent": {"purposes": {"analytics": False}}}
    assert "no analytics consent" in why_undelivered(no_consent)
    assert "disk full" in why_undelivered({**UP, "disk": {"full": True}})
    slow = {**UP, "in_flight": 3, "uplink": {"ack_timeout_s": 12.5}}
    assert why_undelivered(slow) == "3 batches sent, not acked yet (ack timeout 12.5 s)"
    assert "waiting in the outbox" in why_undelivered(UP)
