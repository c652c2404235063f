"""Credentials as both daemons read them: one password file rule, the password never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mqttlink.connect import (
    MAX_SECRET_BYTES,
    ClientOptions,
    Credentials,
    password_from_url,
    read_secret,
)
from mqttlink.errors import CredentialError, MqttLinkError


def test_a_password_file_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret\r\n")
    assert read_secret(path) == "s3cret"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\n", "the file is empty"),
        (b"x" * (MAX_SECRET_BYTES + 1), "larger than a password can be"),
        (b"\xff\xfe", "not UTF-8"),
        (None, "cannot read"),
    ],
)
def test_an_unusable_password_file_names_the_file_and_why_never_the_content(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CredentialError, match=reason) as raised:
        read_secret(path)
    assert isinstance(raised.value, MqttLinkError)
    assert raised.value.path == path
    assert "xxxx" not in str(raised.value)


def test_the_password_never_shows_in_repr() -> None:
    creds = Credentials("gateway", "hunter2", tls=True)
    options = ClientOptions("h", 1883, "c", credentials=creds)
    assert "hunter2" not in repr(creds) and "hunter2" not in repr(options)
    assert options.broker == "mqtts://h:1883"


def test_a_ca_file_implies_tls(tmp_path: Path) -> None:
    class Secret:
        def get_secret_value(self) -> str:
            return "pw"

    creds = Credentials.of("u", Secret(), ca_file=tmp_path / "ca.pem")
    assert creds.tls and creds.password == "pw"
    params = creds.tls_params()
    assert params is not None and params.ca_certs == str(tmp_path / "ca.pem")
    assert Credentials.of(None, None).tls_params() is None


def test_a_password_from_the_url_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert password_from_url("pw") == "pw"
        assert password_from_url(None) is None
    assert [r.message for r in caplog.records if "process list" in r.message] != []
    assert len(caplog.records) == 1
