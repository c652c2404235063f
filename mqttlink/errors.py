"""One root error for the MQTT adapter, narrow subclasses with data; aiomqtt's wrapped here."""

from __future__ import annotations

from pathlib import Path

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

AUTH_CODES = frozenset({4, 5, 134, 135})
"""CONNACK codes that say "not you": 3.1.1 bad credentials / not authorised, 5.0 the same."""


class MqttLinkError(Exception):
    """Anything the MQTT adapter reports; aiomqtt's and paho's errors never escape it."""


class CredentialError(MqttLinkError):
    """A password file that cannot be used: `path` and `reason` (never its content)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ConnectFailed(MqttLinkError):
    """The broker could not be reached or refused the session; `code` is its CONNACK code."""

    def __init__(self, broker: str, detail: str, code: int | None = None) -> None:
        super().__init__(f"cannot connect to {broker}: {detail}")
        self.broker = broker
        self.code = code


class NotAuthorized(ConnectFailed):
    """The broker refused these credentials (CONNACK 4/5, or 134/135 in MQTT 5)."""


class SessionLost(MqttLinkError):
    """An established session ended (the broker went away, a keepalive lapsed, a timeout)."""


class SubscribeRefused(SessionLost):
    """The broker refused a subscription (SUBACK 0x80 or an MQTT 5 failure reason): seen on a
    NATS node for seconds after another node died. Treated as a lost session, so the link
    reconnects and subscribes again instead of living on without the subscription."""

    def __init__(self, topic_filter: str, code: int) -> None:
        super().__init__(f"subscription to {topic_filter} refused by the broker (code {code:#x})")
        self.topic_filter = topic_filter
        self.code = code


class PublishFailed(MqttLinkError):
    """A publish was not acknowledged: `topic` and why; the caller may send it again."""

    def __init__(self, topic: str, detail: str) -> None:
        super().__init__(detail)
        self.topic = topic


class SessionEnded(PublishFailed):
    """The session ended while a publish waited for its PUBACK."""

    def __init__(self, topic: str) -> None:
        super().__init__(topic, f"the MQTT session ended before the broker acknowledged {topic}")


def connect_error(broker: str, exc: aiomqtt.MqttError) -> ConnectFailed:
    """aiomqtt's connect failure as ours (NotAuthorized for a refusal of the credentials)."""
    rc = getattr(exc, "rc", None)
    code = rc.value if isinstance(rc, ReasonCode) else rc
    kind = NotAuthorized if code in AUTH_CODES else ConnectFailed
    return kind(broker, str(exc), code if isinstance(code, int) else None)
