"""Once-per-key logging: the first of a kind loud, the rest quiet, the keys bounded; and a
link's outages told at WARNING when they begin, now and then while they last, and at the end."""

from __future__ import annotations

import logging

import aiomqtt.client
import pytest

import mqttlink.connect  # noqa: F401 - installs the late-answer filter on aiomqtt's logger
from mqttlink.logs import OnceLogger, OutageLog
from tests.support.clock import FakeClock

log = logging.getLogger("tests.mqttlink.once")


def levels(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == log.name]


def test_each_key_is_loud_once_then_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    once = OnceLogger(log)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        once.log("bad", "bad message from %s", "tv-1")
        once.log("bad", "bad message from %s", "tv-2")
        once.log(("other", None), "other")
    assert levels(caplog) == [
        (logging.WARNING, "bad message from tv-1 (further ones at DEBUG)"),
        (logging.DEBUG, "bad message from tv-2"),
        (logging.WARNING, "other (further ones at DEBUG)"),
    ]


def test_past_its_bound_a_new_key_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """A peer that varies its fault must not get a WARNING per message."""
    once = OnceLogger(log, max_keys=3, suffix="")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for n in range(100):
            once.log(f"device-{n}", "rejected device-%d", n)
    loud = [m for lvl, m in levels(caplog) if lvl == logging.WARNING]
    assert loud == ["rejected device-0", "rejected device-1", "rejected device-2"]
    assert len(levels(caplog)) == 100


def test_once_at_info_and_never_again(caplog: pytest.LogCaptureFixture) -> None:
    once = OnceLogger(log, level=logging.INFO, again=None, suffix="")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for _ in range(5):
            once.log("Bundle", "Bundle carries new fields")
    assert levels(caplog) == [(logging.INFO, "Bundle carries new fields")]


def test_an_outage_is_warned_while_it_lasts_and_its_end_is_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(1000.0)
    outage = OutageLog(log, every_s=60.0, clock=clock)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        outage.up("mqtt://b:1883")  # a healthy start: not a warning
        for _ in range(5):  # retries within a minute: one warning, the rest at DEBUG
            outage.down("mqtt://b:1883", "Connection refused", 0.5)
            clock.advance(10)
        clock.advance(20)
        outage.down("mqtt://b:1883", "Connection refused", 30.0)  # 70 s in: reminded
        clock.advance(5)
        outage.up("mqtt://b:1883", "as gw-1")
    warnings = [m for level, m in levels(caplog) if level == logging.WARNING]
    assert warnings == [
        "cannot reach the broker mqtt://b:1883 (Connection refused); retrying in the background",
        "the broker mqtt://b:1883 is still unreachable after 70 s (Connection refused);"
        " still retrying",
        "link back to mqtt://b:1883 as gw-1 after 75 s down",
    ]
    assert (logging.INFO, "link up to mqtt://b:1883") in levels(caplog)
    assert outage.down_since is None


def test_a_late_suback_is_not_logged_as_an_error_with_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiomqtt logs the SUBACK of a subscribe cancelled at shutdown with `logger.exception`;
    on its logger (installed by `mqttlink.connect`) that becomes one DEBUG line, and every
    other record still passes."""
    logger = aiomqtt.client.MQTT_LOGGER
    pending: dict[int, object] = {}  # as aiomqtt's once the subscribe was cancelled
    with caplog.at_level(logging.DEBUG):
        try:
            pending.pop(3)
        except KeyError:
            logger.exception('Unexpected message ID "%d" in on_subscribe callback', 3)
        logger.error("a real failure")
    assert [r.levelno for r in caplog.records if r.name == "mqtt"] == [logging.ERROR]
    assert "a real failure" in caplog.text and "Traceback" not in caplog.text
    assert "a late answer" in caplog.text
