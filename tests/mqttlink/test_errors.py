"""aiomqtt's errors become ours at the boundary: one root, the CONNACK code kept."""

from __future__ import annotations

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError

from mqttlink.errors import ConnectFailed, MqttLinkError, NotAuthorized, connect_error


@pytest.mark.parametrize("code", [4, 5])
def test_a_refusal_of_the_credentials_is_not_authorized(code: int) -> None:
    error = connect_error("mqtt://h:1883", MqttConnectError(code))
    assert isinstance(error, NotAuthorized)
    assert isinstance(error, MqttLinkError)
    assert error.code == code
    assert "mqtt://h:1883" in str(error)


def test_other_failures_are_connect_failed() -> None:
    error = connect_error("mqtt://h:1883", MqttConnectError(3))
    assert type(error) is ConnectFailed and error.code == 3
    timeout = connect_error("mqtt://h:1883", aiomqtt.MqttError("Operation timed out"))
    assert type(timeout) is ConnectFailed and timeout.code is None
