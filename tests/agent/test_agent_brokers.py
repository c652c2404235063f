"""`--broker` with a cluster's nodes: a comma-separated list, validated, each URL named in
errors; the link tries them in order and says which one it is on."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import MAX_BROKERS, load_settings
from agent.errors import ConfigError
from agent.link.session import Link
from agent.runtime.metrics import Metrics
from protocol.broker_url import parse_broker_urls
from protocol.envelopes import State


def settings(broker: str, environ: dict[str, str] | None = None) -> object:
    return load_settings("tv", "tv-1", broker, Path("/nonexistent"), environ=environ or {})


def test_a_list_of_urls_keeps_its_order() -> None:
    s = load_settings(
        "tv", "tv-1", "mqtt://a:1883, b:1884,mqtt://[::1]:1885", Path("/x"), environ={}
    )
    assert s.brokers == (("a", 1883), ("b", 1884), ("::1", 1885))
    assert (s.broker_host, s.broker_port) == ("a", 1883)


def test_one_url_is_a_list_of_one() -> None:
    s = load_settings("tv", "tv-1", "mqtt://a", Path("/x"), environ={})
    assert s.brokers == (("a", 1883),) and s.broker_alternates == ()


@pytest.mark.parametrize(
    ("broker", "named"),
    [
        ("mqtt://a:1,http://b:2", "'http://b:2' must start with mqtt://"),
        ("mqtt://a:1,mqtt://b:x", "'mqtt://b:x' has a bad port"),
        ("mqtt://a:1,,mqtt://b:2", "#2 of the list is empty"),
        ("mqtt://a:1,mqtt://a:1", "'mqtt://a:1' is given twice"),
        ("mqtt://a:1,mqtts://b:2", "'mqtts://b:2' differs from the first"),
        ("mqtt://u:pw@a:1,mqtt://v:pw@b:2", "'mqtt://***@b:2' differs from the first"),
        (" , ", "no broker URL given"),
    ],
)
def test_a_bad_list_names_the_url_at_fault(broker: str, named: str) -> None:
    with pytest.raises(ConfigError, match="broker") as raised:
        settings(broker)
    assert named in str(raised.value)
    assert "pw" not in str(raised.value)


def test_too_many_brokers_are_refused() -> None:
    urls = ",".join(f"mqtt://h{i}:1883" for i in range(MAX_BROKERS + 1))
    with pytest.raises(ConfigError, match=f"more than {MAX_BROKERS}"):
        settings(urls)


def test_shared_credentials_and_tls_come_from_the_urls() -> None:
    urls = parse_broker_urls("mqtts://u@a,mqtts://u@b:9999")
    assert [(u.host, u.port, u.tls, u.username) for u in urls] == [
        ("a", 8883, True, "u"),
        ("b", 9999, True, "u"),
    ]


def test_the_environment_variable_is_the_broker_not_a_profile_key(tmp_path: Path) -> None:
    """The systemd unit's environment file sets EDGEMART_BROKER (and the profile and device
    id) for the command line; the environment layer must not read them as profile keys."""
    env = {"EDGEMART_BROKER": "mqtt://x:1", "EDGEMART_PROFILE": "tv", "EDGEMART_DEVICE_ID": "d"}
    s = load_settings("tv", "tv-1", "mqtt://a:1,mqtt://b:2", tmp_path, environ=env)
    assert s.brokers == (("a", 1), ("b", 2))


def test_the_cli_takes_the_list_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGEMART_BROKER", "mqtt://a:1,ftp://b:2")
    argv = ["run", "--profile", "tv", "--device-id", "tv-1", "--data-dir", str(tmp_path)]
    code = main([*argv, "--trust", str(tmp_path / "trust.json")])
    assert code == 2
    assert "'ftp://b:2' must start with mqtt://" in capsys.readouterr().err


def test_the_link_starts_on_the_first_broker_and_shows_it() -> None:
    s = load_settings("tv", "tv-1", "mqtt://a:1,mqtt://b:2", Path("/x"), environ={})

    async def ignore(_message: object) -> None:
        return None

    link = Link(
        s,
        birth=lambda: State(device_id="tv-1", status="online"),
        on_message=ignore,
        on_connected=lambda: None,
        metrics=Metrics(),
    )
    assert link.broker == "mqtt://a:1"
    link.machine.rotation.failed()
    assert link.broker == "mqtt://b:2"
    options = link.options()
    assert (options.host, options.port, options.client_id, options.clean_start) == (
        "b",
        2,
        "tv-1",
        False,
    )
