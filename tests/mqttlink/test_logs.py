"""Once-per-key logging: the first of a kind loud, the rest quiet, the keys bounded."""

from __future__ import annotations

import logging

import pytest

from mqttlink.logs import OnceLogger

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
